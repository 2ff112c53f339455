"""The discovery part of a Kubernetes API server, on loopback, for
`kubectl apply --dry-run=client` where no cluster is.

kubectl asks the server which kinds exist (the discovery documents) even for
a client-side dry run, and whether each object exists (GET: 404 here, so it
reports "created (dry run)"). Nothing is stored; every write is refused. The
port (bound as 0) is printed on the first line of stdout.

    python3 tests/kube_api.py
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def resource(name, kind, namespaced=True):
    return {
        "name": name,
        "singularName": kind.lower(),
        "namespaced": namespaced,
        "kind": kind,
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    }


CORE = [
    resource("configmaps", "ConfigMap"),
    resource("namespaces", "Namespace", namespaced=False),
    resource("pods", "Pod"),
    resource("secrets", "Secret"),
    resource("serviceaccounts", "ServiceAccount"),
    resource("services", "Service"),
]
APPS = [
    resource("daemonsets", "DaemonSet"),
    resource("deployments", "Deployment"),
    resource("statefulsets", "StatefulSet"),
]
APPS_V1 = {"groupVersion": "apps/v1", "version": "v1"}

DOCUMENTS = {
    "/version": {"major": "1", "minor": "37", "gitVersion": "v1.37.0"},
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": "apps", "versions": [APPS_V1], "preferredVersion": APPS_V1}],
    },
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": CORE},
    "/apis/apps/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": APPS},
}


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Handler(BaseHTTPRequestHandler):
    def answer(self, code, document):
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in DOCUMENTS:
            self.answer(200, DOCUMENTS[path])
        else:
            self.answer(404, status(404, "NotFound", f"{path} not found"))

    def refuse(self):
        self.answer(405, status(405, "MethodNotAllowed", "this server only answers discovery"))

    do_POST = do_PUT = do_PATCH = do_DELETE = refuse

    def log_message(self, format, *args):
        sys.stderr.write("kube_api: " + format % args + "\n")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
