//! A gRPC response message prepared once and sent many times.
//!
//! tonic encodes every reply into a fresh buffer: a copy of the whole
//! document per GetArgs request and per watcher on every change. The broker
//! instead encodes the whole-document `Args` once per revision, as the
//! bytes a gRPC response body carries, and hands them out by reference
//! count. The JSON field is written last (protobuf parsers take fields in
//! any order), so a large document stays the snapshot's own `Bytes` behind
//! a small head.
use crate::pb;
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

/// Documents up to this size are copied into the frame, so the reply is one
/// buffer (one HTTP/2 DATA frame); larger ones are sent from the snapshot's
/// own bytes, never copied.
const INLINE_MAX: usize = 16 * 1024;

/// gRPC's message prefix: a compressed flag and a big-endian length.
pub const PREFIX_LEN: usize = 5;

/// A message as gRPC puts it in a response body: a 5-byte prefix, then the
/// message, byte for byte what tonic would send for it. A large document
/// (over 16 KiB) is not copied into the frame: the frame is its head (the
/// prefix, the revision, the JSON field's key and length), the snapshot's
/// own JSON `Bytes`, and its tail (the fields after the JSON).
#[derive(Debug, Clone)]
pub struct Frame {
    head: Bytes,
    /// Empty when the JSON is inlined in `head`.
    json: Bytes,
    /// Empty when the JSON is inlined in `head`.
    tail: Bytes,
}

impl Frame {
    pub fn new(args: &pb::Args) -> Self {
        let before = pb::Args {
            revision: args.revision,
            ..Default::default()
        };
        let after = pb::Args {
            sha256: args.sha256.clone(),
            not_modified: args.not_modified,
            lineage: args.lineage.clone(),
            ..Default::default()
        };
        let message_len = args.encoded_len();
        let mut head = BytesMut::with_capacity(PREFIX_LEN + message_len.min(INLINE_MAX + 256));
        head.put_u8(0);
        // --max-args-bytes keeps every message under 4 GiB.
        head.put_u32(message_len as u32);
        before.encode_raw(&mut head);
        if !args.json.is_empty() {
            encode_key(2, WireType::LengthDelimited, &mut head);
            encode_varint(args.json.len() as u64, &mut head);
        }
        if args.json.len() <= INLINE_MAX {
            head.put_slice(&args.json);
            after.encode_raw(&mut head);
            return Self {
                head: head.freeze(),
                json: Bytes::new(),
                tail: Bytes::new(),
            };
        }
        let mut tail = BytesMut::with_capacity(after.encoded_len());
        after.encode_raw(&mut tail);
        Self {
            head: head.freeze(),
            json: args.json.clone(),
            tail: tail.freeze(),
        }
    }

    /// Any other reply message, encoded whole (ListRevisions).
    pub fn message(message: &impl Message) -> Self {
        let mut head = BytesMut::with_capacity(PREFIX_LEN + message.encoded_len());
        head.put_u8(0);
        head.put_u32(message.encoded_len() as u32);
        message.encode_raw(&mut head);
        Self {
            head: head.freeze(),
            json: Bytes::new(),
            tail: Bytes::new(),
        }
    }

    /// The bytes to send, in order; the second and third are empty unless
    /// the document is large.
    pub fn into_parts(self) -> [Bytes; 3] {
        [self.head, self.json, self.tail]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: Bytes) -> pb::Args {
        pb::Args {
            revision: 300,
            json,
            sha256: "ab".repeat(32),
            not_modified: false,
            lineage: "0123456789abcdef".into(),
        }
    }

    fn message(frame: &Frame) -> (u8, usize, pb::Args) {
        let mut bytes = frame.head.to_vec();
        bytes.extend_from_slice(&frame.json);
        bytes.extend_from_slice(&frame.tail);
        let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(declared, bytes.len() - PREFIX_LEN);
        let decoded = pb::Args::decode(&bytes[PREFIX_LEN..]).expect("a valid Args");
        (bytes[0], declared, decoded)
    }

    /// What tonic sends for `message`: its prost encoding behind the prefix.
    fn as_tonic_sends_it(message: &impl Message) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut bytes).unwrap();
        bytes
    }

    fn bytes(frame: &Frame) -> Vec<u8> {
        frame.clone().into_parts().concat()
    }

    #[test]
    fn every_frame_is_byte_for_byte_what_tonic_sends() {
        let whole = args(Bytes::from_static(b"{\"workers\":4}"));
        let large = args(Bytes::from(format!(
            "{{\"k\":\"{}\"}}",
            "x".repeat(INLINE_MAX)
        )));
        let pointer = args(Bytes::from_static(b"4"));
        let not_modified = pb::Args {
            not_modified: true,
            ..args(Bytes::new())
        };
        let replayed = pb::Args {
            revision: 1,
            ..args(Bytes::from_static(b"{}"))
        };
        for reply in [whole, large, pointer, not_modified, replayed] {
            assert_eq!(bytes(&Frame::new(&reply)), as_tonic_sends_it(&reply));
        }
        let list = pb::ListRevisionsResponse {
            revisions: vec![pb::Revision {
                revision: 3,
                source: "patch".into(),
                writer_uid: Some(0),
                ..Default::default()
            }],
        };
        assert_eq!(bytes(&Frame::message(&list)), as_tonic_sends_it(&list));
    }

    #[test]
    fn a_small_document_is_one_buffer_that_decodes_to_the_same_args() {
        let original = args(Bytes::from_static(b"{\"workers\":4}"));
        let frame = Frame::new(&original);
        assert!(frame.json.is_empty() && frame.tail.is_empty());
        let (flag, len, decoded) = message(&frame);
        assert_eq!((flag, len), (0, original.encoded_len()));
        assert_eq!(decoded, original);
    }

    #[test]
    fn a_large_document_is_sent_from_the_snapshot_bytes_without_a_copy() {
        let json = Bytes::from(format!("{{\"k\":\"{}\"}}", "x".repeat(INLINE_MAX)));
        let original = args(json.clone());
        let frame = Frame::new(&original);
        assert_eq!(frame.json.as_ptr(), json.as_ptr());
        assert!(frame.head.len() < 128);
        let (_, len, decoded) = message(&frame);
        assert_eq!(len, original.encoded_len());
        assert_eq!(decoded, original);
    }

    #[test]
    fn a_not_modified_reply_without_json_decodes() {
        let original = pb::Args {
            not_modified: true,
            ..args(Bytes::new())
        };
        let (_, _, decoded) = message(&Frame::new(&original));
        assert_eq!(decoded, original);
    }
}
