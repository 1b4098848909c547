//! The service's tests, one binary (each module was its own before, and linked the whole
//! crate again): unit-level suites of the wire formats, the store, requests, policies and
//! tokens, and end-to-end suites against the real devnet, a real SMTP server and the binary.
//! `cargo test --test api <module>::` runs one suite, e.g. `cargo test --test api breakglass::`.

mod support;

mod breakglass;
mod chain;
mod cli;
mod crash;
mod notify;
mod paging;
mod policy;
mod replicas;
mod request;
mod review;
mod rpc;
mod stacks_codec;
mod store;
mod token;
mod vault;
mod vectors;
