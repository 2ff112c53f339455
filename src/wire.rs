//! `argsbroker.v1.Args` with its `json` field held as [`Bytes`].
//!
//! On the wire a proto3 `string` field and a `bytes` field are the same
//! (length-delimited), so this type reads and writes exactly the messages
//! `proto/argsbroker/v1/args.proto` describes. Holding the text as `Bytes`
//! lets the broker hand every reader the text prepared once per revision by
//! reference count: no copy per request or per watcher but the one into the
//! HTTP/2 frame. `build.rs` maps the proto message to this type.
use bytes::Bytes;

/// A snapshot of the document (or of the value at a pointer) at one revision.
/// See the proto for the meaning of each field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Args {
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    /// JSON text, UTF-8 (a `string` in the proto).
    #[prost(bytes = "bytes", tag = "2")]
    pub json: Bytes,
    #[prost(string, tag = "3")]
    pub sha256: String,
    #[prost(bool, tag = "4")]
    pub not_modified: bool,
    #[prost(string, tag = "5")]
    pub lineage: String,
}

impl Args {
    /// The JSON text as a `str`; an error only if a peer sent bytes that are not UTF-8.
    pub fn json_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// What prost generates for the proto's `string json = 2`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct AsInProto {
        #[prost(uint64, tag = "1")]
        revision: u64,
        #[prost(string, tag = "2")]
        json: String,
        #[prost(string, tag = "3")]
        sha256: String,
        #[prost(bool, tag = "4")]
        not_modified: bool,
        #[prost(string, tag = "5")]
        lineage: String,
    }

    #[test]
    fn same_bytes_on_the_wire_as_the_proto() {
        let ours = Args {
            revision: 7,
            json: Bytes::from_static("{\"é\":1}".as_bytes()),
            sha256: "ab".into(),
            not_modified: true,
            lineage: "l1".into(),
        };
        let theirs = AsInProto {
            revision: 7,
            json: "{\"é\":1}".into(),
            sha256: "ab".into(),
            not_modified: true,
            lineage: "l1".into(),
        };
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
        assert_eq!(Args::decode(&theirs.encode_to_vec()[..]).unwrap(), ours);
    }
}
