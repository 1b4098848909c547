//! Break-glass request verification, against requests signed by @stacks/transactions (the
//! shared vectors) and a catalogue of bad input: every one a clear error, none a panic.

use breakglass::domain::{DataType, PatientId};
use breakglass::request::{self, RequestError, MAX_BODY_BYTES};
use breakglass::stacks::tx::{MAINNET_CHAIN_ID, TESTNET_CHAIN_ID};
use breakglass::stacks::Value;
use secp256k1::SecretKey;
use serde_json::json;

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/stacks-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn body(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn issued_at(case: &serde_json::Value) -> u64 {
    let m = Value::from_hex(case["message_cv_hex"].as_str().unwrap()).unwrap();
    match m.as_tuple().unwrap().get("issued-at") {
        Some(Value::UInt(u)) => *u as u64,
        _ => panic!(),
    }
}

#[test]
fn wallet_signed_requests_verify_to_their_signer() {
    for case in vectors()["sip018"].as_array().unwrap() {
        let domain = Value::from_hex(case["domain_cv_hex"].as_str().unwrap()).unwrap();
        let mainnet = domain.to_string().contains("(chain-id u1)");
        let chain_id = if mainnet {
            MAINNET_CHAIN_ID
        } else {
            TESTNET_CHAIN_ID
        };
        let b = body(
            json!({ "message": case["message_cv_hex"], "signature": case["signature_rsv_hex"] }),
        );
        let at = issued_at(case);
        let r = request::verify(&b, chain_id, mainnet, at + 30).unwrap();
        let expected = if mainnet {
            &case["address_mainnet"]
        } else {
            &case["address_testnet"]
        };
        assert_eq!(r.signer.to_string(), expected.as_str().unwrap());
        assert_eq!(
            hex::encode(r.message_hash),
            case["message_hash_hex"].as_str().unwrap()
        );
        assert_eq!(r.issued_at, at);
        assert!(!r.data_types.is_empty());
        assert!(r.data_types.contains(&DataType::Allergies));
        // the same body for the other network is signed by someone else entirely
        let other = request::verify(
            &b,
            if mainnet {
                TESTNET_CHAIN_ID
            } else {
                MAINNET_CHAIN_ID
            },
            !mainnet,
            at,
        );
        assert!(other
            .map(|o| o.signer.to_string() != expected.as_str().unwrap())
            .unwrap_or(true));
    }
}

fn key() -> SecretKey {
    SecretKey::from_slice(&[7u8; 32]).unwrap()
}

const NOW: u64 = 1_800_000_000;

fn good_message() -> Value {
    request::message(
        &PatientId([9; 32]),
        &["allergies", "medications"],
        "unconscious, suspected anaphylaxis",
        1,
        NOW,
        Some("tablet-3"),
    )
}

fn signed(message: &Value) -> serde_json::Value {
    request::sign(&key(), TESTNET_CHAIN_ID, message)
}

fn check(b: &[u8]) -> Result<request::BreakGlassRequest, RequestError> {
    request::verify(b, TESTNET_CHAIN_ID, false, NOW)
}

fn with_field(name: &str, v: Value) -> Value {
    let mut t = good_message().as_tuple().unwrap().clone();
    t.insert(name.to_string(), v);
    Value::Tuple(t)
}

fn without_field(name: &str) -> Value {
    let mut t = good_message().as_tuple().unwrap().clone();
    t.remove(name);
    Value::Tuple(t)
}

#[test]
fn a_good_request_verifies_with_every_field() {
    let r = check(&body(signed(&good_message()))).unwrap();
    assert_eq!(r.patient, PatientId([9; 32]));
    assert_eq!(
        r.data_types,
        vec![DataType::Allergies, DataType::Medications]
    );
    assert_eq!(r.reason, "unconscious, suspected anaphylaxis");
    assert_eq!((r.nonce, r.issued_at), (1, NOW));
    assert_eq!(r.device.as_deref(), Some("tablet-3"));
    // a reason in any script, over lines, is taken as written
    for reason in [
        "bewusstlos,\nallergische Reaktion",
        "pasted\u{0C}text\u{85}over\u{2028}lines\u{0B}",
        "Er\u{AD}brechen, \u{200F}נפל",
        "意識不明",
        "فاقد الوعي",
        "9 / 10 pain 👩\u{200D}⚕️",
        // an emoji's selector then its joiner; an ideograph's variant; a keycap
        "rainbow flag tattoo 🏳\u{FE0F}\u{200D}🌈",
        "葛\u{E0100}城 family name",
        "GCS 1\u{FE0F}\u{20E3}",
        // joiners and non-joiners inside words, a skin tone
        "بیمار می\u{200C}خواهد، بی\u{200C}هوش است",
        "क्\u{200D}षति, बेहोश",
        "👍\u{1F3FD} stable, 葛\u{E0100}西 and 辻\u{E0100}",
        // a subdivision's flag; a word hyphenated at every syllable; Burmese spaced
        "fan 🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F} collapsed",
        "Be\u{AD}wusst\u{AD}lo\u{AD}sig\u{AD}keit, Ver\u{AD}dacht auf Ana\u{AD}phy\u{AD}la\u{AD}xie",
        "သတိ\u{200B}လစ်\u{200B}နေ\u{200B}သည်",
        "chest pain ❤\u{FE0F} #\u{FE0F}\u{20E3} 👁\u{FE0F}\u{200D}🗨\u{FE0F}",
        // soft hyphens at every syllable: more than a quarter of the characters shown
        &"ka\u{AD}".repeat(20),
        // a character Unicode assigns after this build's data (an emoji to come) shows
        "pain \u{1FAFF}",
        // traditional Mongolian: the vowel separator before a final a
        "ᠬᠠᠷᠠ\u{180E}ᠠ ᠦᠪᠳᠡᠭ",
        // pasted: a byte order mark first; Thai over lines, a word break where one starts
        "\u{FEFF}unconscious, found at home",
        "หมดสติ\u{200B}ที่บ้าน\n\u{200B}แพ้ยา",
        "\u{200B}หมดสติ\u{0C}\u{200B}แพ้ยา",
        "\u{FEFF}\u{200B}หมดสติ",
        // an emoji shown as text in a ZWJ sequence
        "burn ❤\u{FE0E}\u{200D}🔥 on the arm",
    ] {
        let m = with_field("reason", Value::Utf8(reason.into()));
        assert_eq!(check(&body(signed(&m))).unwrap().reason, reason);
    }
    let without_device = with_field("device", Value::None);
    assert_eq!(check(&body(signed(&without_device))).unwrap().device, None);
    // and with our own domain stated
    let mut b = signed(&good_message());
    b["domain"] = json!(request::domain(TESTNET_CHAIN_ID).to_hex());
    assert!(check(&body(b)).is_ok());
}

#[test]
fn bad_input_catalogue() {
    let good = signed(&good_message());
    let msg = good["message"].as_str().unwrap().to_string();
    let sig = good["signature"].as_str().unwrap().to_string();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("JSON, not an object", b"[1,2]".to_vec()),
        ("empty body", Vec::new()),
        (
            "unknown body field",
            body(json!({ "message": msg, "signature": sig, "extra": 1 })),
        ),
        ("missing signature", body(json!({ "message": msg }))),
        (
            "message not hex",
            body(json!({ "message": "0xzz", "signature": sig })),
        ),
        (
            "truncated message hex",
            body(json!({ "message": &msg[..msg.len() - 7], "signature": sig })),
        ),
        (
            "truncated message bytes",
            body(json!({ "message": &msg[..msg.len() - 8], "signature": sig })),
        ),
        (
            "message not a tuple",
            body(json!({ "message": Value::UInt(1).to_hex(), "signature": sig })),
        ),
        (
            "huge body",
            body(json!({ "message": msg, "signature": sig, "pad": "x".repeat(MAX_BODY_BYTES) })),
        ),
        (
            "signature not hex",
            body(json!({ "message": msg, "signature": "nope" })),
        ),
        (
            "message with two 0x prefixes",
            body(json!({ "message": format!("0x{msg}"), "signature": sig })),
        ),
    ];
    for (what, b) in malformed {
        assert!(
            matches!(check(&b), Err(RequestError::Malformed(_))),
            "{what}: {:?}",
            check(&b)
        );
    }

    let too_many: Vec<&str> = vec![
        "allergies",
        "medications",
        "problems",
        "blood-type",
        "advance-directives",
        "immunizations",
        "emergency-summary",
        "vitals",
        "lab-results",
    ];
    let bad_messages: Vec<(&str, Value)> = vec![
        ("wrong action", with_field("action", Value::ascii("peek"))),
        (
            "action of the wrong type",
            with_field("action", Value::Utf8("break-glass".into())),
        ),
        (
            "short patient id",
            with_field("patient", Value::buffer([1u8; 31])),
        ),
        (
            "patient id as a string",
            with_field("patient", Value::ascii("patient-1")),
        ),
        (
            "no data types",
            with_field("data-types", Value::List(vec![])),
        ),
        (
            "too many data types",
            with_field(
                "data-types",
                Value::List(too_many.iter().map(|d| Value::ascii(d)).collect()),
            ),
        ),
        (
            "unknown data type",
            with_field("data-types", Value::List(vec![Value::ascii("horoscope")])),
        ),
        (
            "repeated data type",
            with_field(
                "data-types",
                Value::List(vec![Value::ascii("allergies"), Value::ascii("allergies")]),
            ),
        ),
        (
            "data type of the wrong type",
            with_field("data-types", Value::List(vec![Value::UInt(1)])),
        ),
        (
            "empty reason",
            with_field("reason", Value::Utf8("  ".into())),
        ),
        (
            "oversized reason",
            with_field("reason", Value::Utf8("x".repeat(501))),
        ),
        ("reason as ascii", with_field("reason", Value::ascii("why"))),
        // a reason that says nothing as shown, or is not shown as it is
        (
            "invisible reason",
            with_field("reason", Value::Utf8("\u{200B}\u{2060}".into())),
        ),
        (
            "reason of punctuation",
            with_field("reason", Value::Utf8("...".into())),
        ),
        (
            "reason with a control character",
            with_field("reason", Value::Utf8("fell\u{7}".into())),
        ),
        (
            "reason reordered as shown",
            with_field("reason", Value::Utf8("allergy \u{202E}ti deen".into())),
        ),
        (
            "reason with hidden text",
            with_field("reason", Value::Utf8("fall \u{E0069}\u{E0067}".into())),
        ),
        // a byte a variation selector, a bit a zero-width space: hidden text in runs
        (
            "reason with text hidden in variation selectors",
            with_field(
                "reason",
                Value::Utf8(format!("fall{}", "\u{E0100}\u{E0148}".repeat(8))),
            ),
        ),
        (
            "reason with a variation selector after a space",
            with_field("reason", Value::Utf8("fall \u{FE0F}".into())),
        ),
        (
            "reason with a zero-width space after a space",
            with_field("reason", Value::Utf8("fall \u{200B}x".into())),
        ),
        (
            "reason with a byte order mark inside",
            with_field("reason", Value::Utf8("fall\u{FEFF}x".into())),
        ),
        (
            "reason with a byte order mark after the first",
            with_field("reason", Value::Utf8("\u{FEFF}\u{FEFF}fall".into())),
        ),
        (
            "reason with a zero-width space after a tab",
            with_field("reason", Value::Utf8("fall\t\u{200B}x".into())),
        ),
        (
            "reason with an invisible operator",
            with_field("reason", Value::Utf8("fall\u{2062}x".into())),
        ),
        (
            "reason with tag characters but a flag's",
            with_field(
                "reason",
                Value::Utf8("🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067} fell".into()),
            ),
        ),
        (
            "reason with a flag of tags emoji do not show",
            with_field(
                "reason",
                Value::Utf8("fell 🏴\u{E0075}\u{E0073}\u{E0063}\u{E0061}\u{E007F}".into()),
            ),
        ),
        (
            "reason with more subdivision flags than a reason needs",
            with_field(
                "reason",
                Value::Utf8(format!(
                    "fell {}",
                    "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}".repeat(3)
                )),
            ),
        ),
        (
            "reason with text hidden in a variation selector a letter",
            with_field(
                "reason",
                Value::Utf8("c\u{E0148}h\u{E0155}e\u{E0142}s\u{E0150}t".into()),
            ),
        ),
        (
            "reason with more ideographic variants than a name has",
            with_field("reason", Value::Utf8("葛\u{E0100}".repeat(9))),
        ),
        (
            "reason with text hidden in zero-width characters",
            with_field("reason", Value::Utf8("fa\u{200B}\u{200C}\u{200B}ll".into())),
        ),
        (
            "reason with text hidden in zero-width characters after spaces",
            with_field(
                "reason",
                Value::Utf8(format!("fall{}", " \u{200B}\u{200C}".repeat(20))),
            ),
        ),
        (
            "reason with text hidden in zero-width characters between letters",
            with_field("reason", Value::Utf8("f\u{200B}\u{200C}".repeat(20))),
        ),
        (
            "reason with an unassigned character shown as nothing",
            with_field("reason", Value::Utf8("fall\u{E0080}".into())),
        ),
        ("negative nonce", with_field("nonce", Value::Int(-1))),
        (
            "nonce beyond 64 bits",
            with_field("nonce", Value::UInt(u128::MAX)),
        ),
        (
            "issued-at as int",
            with_field("issued-at", Value::Int(NOW as i128)),
        ),
        (
            "device not optional",
            with_field("device", Value::ascii("tablet")),
        ),
        (
            "oversized device",
            with_field(
                "device",
                Value::Some(Box::new(Value::ascii(&"d".repeat(65)))),
            ),
        ),
        ("unknown field", with_field("hint", Value::Bool(true))),
        ("missing reason", without_field("reason")),
        ("missing nonce", without_field("nonce")),
    ];
    for (what, m) in bad_messages {
        let r = check(&body(signed(&m)));
        assert!(
            matches!(r, Err(RequestError::Malformed(_))),
            "{what}: {r:?}"
        );
    }
}

#[test]
fn signatures_that_do_not_verify() {
    let good = signed(&good_message());
    let sig = hex::decode(good["signature"].as_str().unwrap().trim_start_matches("0x")).unwrap();
    let with_sig = |s: Vec<u8>| {
        body(json!({ "message": good["message"], "signature": format!("0x{}", hex::encode(s)) }))
    };

    // high S: the same signature made malleable, recovery id flipped
    let n =
        hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141").unwrap();
    let mut high = sig.clone();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = n[i] as i16 - sig[32 + i] as i16 - borrow;
        high[32 + i] = d.rem_euclid(256) as u8;
        borrow = (d < 0) as i16;
    }
    high[64] ^= 1;
    assert!(
        matches!(check(&with_sig(high)), Err(RequestError::BadSignature(m)) if m.contains("high S"))
    );
    assert!(matches!(
        check(&with_sig(sig[..64].to_vec())),
        Err(RequestError::BadSignature(_))
    ));
    let mut bad_v = sig.clone();
    bad_v[64] = 27;
    assert!(matches!(
        check(&with_sig(bad_v)),
        Err(RequestError::BadSignature(_))
    ));
    assert!(matches!(
        check(&with_sig(vec![0u8; 65])),
        Err(RequestError::BadSignature(_))
    ));
    // another message under the same signature recovers someone else (never our signer)
    let mut other = good.clone();
    other["message"] = json!(with_field("nonce", Value::UInt(2)).to_hex());
    let signer = check(&body(good.clone())).unwrap().signer;
    assert!(check(&body(other))
        .map(|r| r.signer != signer)
        .unwrap_or(true));
}

#[test]
fn wrong_domain_or_chain_id_is_named_when_stated() {
    for domain in [
        breakglass::stacks::sip018::domain("breakglass", "1", MAINNET_CHAIN_ID),
        breakglass::stacks::sip018::domain("breakglass", "2", TESTNET_CHAIN_ID),
        breakglass::stacks::sip018::domain("other-app", "1", TESTNET_CHAIN_ID),
    ] {
        let mut b = signed(&good_message());
        b["domain"] = json!(domain.to_hex());
        assert!(matches!(check(&body(b)), Err(RequestError::WrongDomain(_))));
    }
    // unstated, a request signed for mainnet recovers a different signer here
    let mainnet_signed = request::sign(&key(), MAINNET_CHAIN_ID, &good_message());
    let ours = check(&body(signed(&good_message()))).unwrap().signer;
    assert_ne!(check(&body(mainnet_signed)).unwrap().signer, ours);
}

#[test]
fn stale_and_future_requests_are_refused() {
    for (at, ok) in [
        (NOW - 60, true),
        (NOW + 60, true),
        (NOW - 61, false),
        (NOW + 61, false),
        (0, false),
    ] {
        let m = with_field("issued-at", Value::UInt(at.into()));
        let r = check(&body(signed(&m)));
        assert_eq!(r.is_ok(), ok, "issued at {at}: {r:?}");
        if !ok {
            assert!(matches!(r, Err(RequestError::Stale { .. })));
        }
    }
}
