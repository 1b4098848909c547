//! breakglass: the emergency-access responder of a Stacks-based medical record system.
//!
//! It must not: hold code (it names the modules).

pub mod access;
pub mod audit;
pub mod chain;
pub mod clock;
pub mod configuration;
pub mod coordination;
pub mod demo;
pub mod dev;
pub mod directory;
pub mod domain;
pub mod http;
pub mod keys;
pub mod latency;
pub mod metrics;
pub mod notify;
pub mod paging;
pub mod policy;
pub mod private_files;
pub mod refusal;
pub mod request;
pub mod review;
pub mod scope;
pub mod seal;
pub mod stacks;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod tools;
pub mod vault;
