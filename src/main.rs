//! `breakglass`: the emergency-access responder service.
//!
//! The service (HTTP API, chain follower, background work) is built in the issues that follow
//! the contracts and devnet; until then the binary only says where to start.

fn main() {
    eprintln!(
        "breakglass: the service is not built yet; run ./scripts/dev for the devnet with demo data"
    );
    std::process::exit(2);
}
