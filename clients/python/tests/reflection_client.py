"""A gRPC client for argsbroker built from server reflection alone: no
generated code, no .proto file. Usage: python reflection_client.py SOCKET [POINTER]

Prints one JSON object: the services the broker lists, the ArgsBroker methods
with their message types, and the GetArgs reply (revision and json text).
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICE = "argsbroker.v1.ArgsBroker"


def main(socket_path: str, pointer: str = "") -> None:
    # The broker refuses the socket path as HTTP/2 :authority, which grpcio sends by default.
    channel = grpc.insecure_channel(f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")])
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    methods = {}
    for method in service.methods:
        # Every request and reply type must resolve into a usable message class.
        message_factory.GetMessageClass(method.input_type)
        message_factory.GetMessageClass(method.output_type)
        methods[method.name] = {
            "input": method.input_type.full_name,
            "output": method.output_type.full_name,
            "server_streaming": method.server_streaming,
        }
    get_args = service.methods_by_name["GetArgs"]
    request_class = message_factory.GetMessageClass(get_args.input_type)
    reply_class = message_factory.GetMessageClass(get_args.output_type)
    call = channel.unary_unary(
        f"/{SERVICE}/GetArgs",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    reply = call(request_class(pointer=pointer), timeout=5)
    print(
        json.dumps(
            {
                "services": sorted(database.get_services()),
                "methods": methods,
                "reply_fields": [field.name for field in get_args.output_type.fields],
                "revision": reply.revision,
                "json": reply.json,
                "sha256": reply.sha256,
                "modules": sorted(name for name in sys.modules if name.startswith("argsbroker")),
            },
            ensure_ascii=False,
        )
    )
    channel.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
