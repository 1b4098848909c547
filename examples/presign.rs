//! Load-test fixture: signs `count` break-glass requests (unique nonces, issued now) with the
//! devnet's demo clinicians' keys, one JSON body per line, for `scripts/bench`.
//!
//!   cargo run --release --example presign -- <demo-identities.json> <count> <out-file>

use std::io::Write;

use breakglass::domain::PatientId;
use breakglass::keys::parse_key;
use breakglass::request;
use breakglass::stacks::tx::TESTNET_CHAIN_ID;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: presign <demo-identities.json> <count> <out-file>"
    );
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let count: u64 = args[2].parse()?;
    let keys: Vec<_> = demo["providers"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .filter(|p| {
            ["physician", "nurse", "paramedic", "pharmacist"]
                .contains(&p["role"].as_str().unwrap_or(""))
        })
        .map(|p| parse_key(p["private_key"].as_str().unwrap_or("")))
        .collect::<Result<_, _>>()?;
    let patient: PatientId = demo["patients"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["emergency_access"] == true))
        .and_then(|p| p["patient_id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no demo patient"))?
        .parse()
        .map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let base: u64 = u64::from(secp256k1::rand::random::<u32>()) << 20;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[3])?);
    for i in 0..count {
        let m = request::message(
            &patient,
            &["allergies"],
            "load test",
            base + i,
            now,
            Some("bench"),
        );
        writeln!(
            out,
            "{}",
            request::sign(&keys[i as usize % keys.len()], TESTNET_CHAIN_ID, &m)
        )?;
    }
    out.flush()?;
    Ok(())
}
