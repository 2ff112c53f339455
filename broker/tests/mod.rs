//! In-process tests of the broker's engine: the store on its own, and the
//! real gRPC server on a real Unix socket in this process (no child
//! process, no binary). They live inside the binary crate so that the
//! engine's modules stay private and nothing moves for them; behaviour
//! that needs a process of its own (signals, exit codes, other users,
//! kill -9) is tested by tests/*.rs against the real binaries.
mod harness;
mod pipeline;
mod requests;
mod store;
