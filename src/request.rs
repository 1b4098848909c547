//! Break-glass requests: what a clinician's tablet sends, and proving who sent it.
//!
//! The body is `{"message": "0x<Clarity tuple>", "signature": "0x<65-byte RSV>"}` (and,
//! optionally, `"domain"`, which must then be ours: it lets a tablet learn it signed for the
//! wrong network instead of being taken for an unknown signer). The message is SIP-018
//! structured data under the domain `{name: "breakglass", version: "1", chain-id}`:
//!
//! ```text
//! { action: "break-glass", patient: (buff 32), data-types: (list 8 (string-ascii 32)),
//!   reason: (string-utf8 500), nonce: uint, issued-at: uint (unix seconds),
//!   device: (optional (string-ascii 64)) }
//! ```
//!
//! Parsing is strict: these fields and types and no others (`device` may be left out),
//! known data types without repeats, a non-empty reason. Verification recovers the signer (low-S signatures only) and checks the
//! clock skew; replay is checked by the caller against the nonces it has seen.
//!
//! It must not: touch the store or the node (it checks the bytes and the signature only).

use serde::Deserialize;

use crate::domain::{DataType, PatientId};
use crate::stacks::{sip018, Address, Value};

pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const MAX_DATA_TYPES: usize = 8;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_DEVICE_CHARS: usize = 64;
pub const MAX_SKEW_SECS: u64 = 60;
pub const DOMAIN_NAME: &str = "breakglass";
pub const DOMAIN_VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassRequest {
    pub signer: Address,
    pub patient: PatientId,
    pub data_types: Vec<DataType>,
    pub reason: String,
    pub nonce: u64,
    pub issued_at: u64,
    pub device: Option<String>,
    pub message_hash: [u8; 32],
    /// The 65-byte recoverable signature, as sent (kept as proof with the access).
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Malformed(String),
    #[error("the request was signed for another domain or network: {0}")]
    WrongDomain(String),
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("the request was issued at {issued_at}, {skew} s away from the server's clock (at most {MAX_SKEW_SECS} s)")]
    Stale { issued_at: u64, skew: u64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    message: String,
    signature: String,
    domain: Option<String>,
}

/// Hex with one optional `0x` (the decoder takes it off).
fn hex_bytes(what: &str, s: &str) -> Result<Vec<u8>, RequestError> {
    hex::decode(s).map_err(|_| RequestError::Malformed(format!("{what} is not hex")))
}

pub fn domain(chain_id: u32) -> Value {
    sip018::domain(DOMAIN_NAME, DOMAIN_VERSION, chain_id)
}

/// Parses and verifies a request body at time `now` (unix seconds).
pub fn verify(
    body: &[u8],
    chain_id: u32,
    mainnet: bool,
    now: u64,
) -> Result<BreakGlassRequest, RequestError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(RequestError::Malformed(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| RequestError::Malformed(format!("the body is not the expected JSON: {e}")))?;
    let ours = domain(chain_id);
    if let Some(d) = &body.domain {
        let theirs = Value::deserialize(&hex_bytes("domain", d)?)
            .map_err(|e| RequestError::Malformed(format!("domain: {e}")))?;
        if theirs != ours {
            return Err(RequestError::WrongDomain(format!(
                "expected {ours}, got {theirs}"
            )));
        }
    }
    let message = Value::deserialize(&hex_bytes("message", &body.message)?)
        .map_err(|e| RequestError::Malformed(format!("message is not a Clarity value: {e}")))?;
    let signature = hex_bytes("signature", &body.signature)?;
    let fields = parse_message(&message)?;

    let hash = sip018::message_hash(&ours, &message);
    let key = sip018::recover(&hash, &signature)
        .map_err(|e| RequestError::BadSignature(e.to_string()))?;
    let signer = Address::from_public_key(&key, mainnet);

    let skew = now.abs_diff(fields.issued_at);
    if skew > MAX_SKEW_SECS {
        return Err(RequestError::Stale {
            issued_at: fields.issued_at,
            skew,
        });
    }
    Ok(BreakGlassRequest {
        signer,
        patient: fields.patient,
        data_types: fields.data_types,
        reason: fields.reason,
        nonce: fields.nonce,
        issued_at: fields.issued_at,
        device: fields.device,
        message_hash: hash,
        signature,
    })
}

/// What the message says (the request but its signer, hash and signature).
struct Fields {
    patient: PatientId,
    data_types: Vec<DataType>,
    reason: String,
    nonce: u64,
    issued_at: u64,
    device: Option<String>,
}

/// Whether a reason reads as what it says, to the patient's notice and the reviewer: at least
/// one letter or digit (one of zero-width or invisible characters alone says nothing), no
/// control character but a line break (of any kind) or tab, no bidirectional override,
/// embedding or isolate (which reorder the text as shown: U+202A-U+202E, U+2066-U+2069), and
/// the characters shown as nothing (Unicode's default-ignorable code points) only where text
/// uses them and no more than it does (`unseen_text`): what could hide in them is bounded, a
/// few bits each at most.
fn readable_reason(r: &str) -> Result<(), RequestError> {
    if !r.chars().any(char::is_alphanumeric) {
        return Err(malformed(
            "reason must say why in words (a letter or digit at least)",
        ));
    }
    let reordering = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    let breaks = |c: char| matches!(c, '\n' | '\r' | '\t' | '\u{0B}' | '\u{0C}' | '\u{85}');
    if let Some(c) = r
        .chars()
        .find(|&c| (c.is_control() && !breaks(c)) || reordering(c))
    {
        return Err(malformed(format!(
            "reason must not hold control or direction characters (U+{:04X})",
            u32::from(c)
        )));
    }
    unseen_text(r).map_err(|(c, why)| {
        malformed(format!(
            "reason must not hold {why} (U+{:04X}): text can hide in them",
            u32::from(c)
        ))
    })
}

/// How many ideographic variation selectors (U+E0100-U+E01EF: 240 of them, a byte each) a
/// reason may hold: a few names written with a variant of their ideographs.
const IDEOGRAPHIC_VARIANTS_MAX: usize = 8;

/// How many flags of a subdivision (an emoji tag sequence: a black flag, its tags, a cancel
/// tag) a reason may hold.
const TAGGED_FLAGS_MAX: usize = 2;

/// The subdivisions whose flags emoji show (Unicode's recommended tag sequences): England,
/// Scotland, Wales. Any other tags would show as a black flag, with text hidden in them.
const TAGGED_FLAGS: [&str; 3] = ["gbeng", "gbsct", "gbwls"];

/// The characters shown as nothing in `r` (Unicode's default-ignorable code points), checked
/// for hidden text; the first that may carry it, and why, if one does. Each is taken only where
/// text uses it, and no more of them than text does (what is left to hide in them is which of
/// a few is used where, under a cap):
/// - a variation selector right after a character it varies: an emoji's form (U+FE0E, U+FE0F)
///   after an emoji, an ideograph's variant (U+E0100-U+E01EF, `IDEOGRAPHIC_VARIANTS_MAX` at
///   most) after an ideograph, a standardized variant (U+FE00-U+FE0D) after an ideograph or a
///   symbol, a Mongolian form (U+180B-U+180D, U+180F) or the vowel separator (U+180E) after a
///   Mongolian letter;
/// - a joiner or non-joiner (U+200C, U+200D), the soft hyphen, a zero-width space, the word
///   joiner or the combining grapheme joiner after a character shown (a joiner also after an
///   emoji's form: a ZWJ sequence; a zero-width space also at the start of a line);
/// - a direction mark (LRM, RLM, ALM) anywhere, and the byte order mark as the first character
///   (text pasted from a file that begins with one);
/// - tag characters only as a subdivision flag's (`TAGGED_FLAGS_MAX` at most);
/// - no other (invisible operators, fillers, deprecated format characters, the BOM elsewhere, the ones
///   Unicode has not assigned);
/// - two in a row at most (an emoji's form then its joiner), and no more of them in all than
///   eight and half the characters shown (text hyphenated at every syllable, Burmese spaced).
fn unseen_text(r: &str) -> Result<(), (char, &'static str)> {
    use icu_properties::props::{
        DefaultIgnorableCodePoint, Emoji, GeneralCategory, Ideographic, VariationSelector,
    };
    use icu_properties::{CodePointMapData, CodePointSetData};
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let selector = CodePointSetData::new::<VariationSelector>();
    let (emoji, ideograph) = (
        CodePointSetData::new::<Emoji>(),
        CodePointSetData::new::<Ideographic>(),
    );
    let category = CodePointMapData::<GeneralCategory>::new();
    let symbol = |c: char| {
        matches!(
            category.get(c),
            GeneralCategory::MathSymbol | GeneralCategory::OtherSymbol
        )
    };
    let tag = |c: char| matches!(c, '\u{E0000}'..='\u{E007F}');
    // (as `readable_reason` takes them: a vertical tab or form feed pasted breaks a line too)
    let line_break = |c: char| {
        matches!(
            c,
            '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        )
    };
    let chars: Vec<char> = r.chars().collect();
    let (mut run, mut unseen, mut shown, mut variants, mut flags) = (0, 0, 0, 0, 0);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\u{1F3F4}' && chars.get(i + 1).copied().is_some_and(tag) {
            // a subdivision's flag: its tags spell the subdivision, and a cancel tag ends them
            let tags: String = chars[i + 1..]
                .iter()
                .take_while(|t| matches!(**t, '\u{E0020}'..='\u{E007E}'))
                .filter_map(|t| char::from_u32(u32::from(*t) - 0xE0000))
                .collect();
            let letters = tags.chars().count();
            let cancel = chars.get(i + 1 + letters) == Some(&'\u{E007F}');
            flags += 1;
            if !TAGGED_FLAGS.contains(&tags.as_str()) || !cancel || flags > TAGGED_FLAGS_MAX {
                return Err((chars[i + 1], "tag characters but a flag's"));
            }
            (shown, run) = (shown + 1, 0);
            i += letters + 2;
            continue;
        }
        i += 1;
        if !ignorable.contains(c) {
            run = 0;
            if !c.is_whitespace() {
                shown += 1;
            }
            continue;
        }
        unseen += 1;
        run += 1;
        let before = i.checked_sub(2).map(|b| chars[b]);
        let after_shown = before.filter(|b| !b.is_whitespace() && !ignorable.contains(*b));
        let taken = match c {
            '\u{E0100}'..='\u{E01EF}' => {
                variants += 1;
                if variants > IDEOGRAPHIC_VARIANTS_MAX {
                    return Err((c, "more ideographic variation selectors than names hold"));
                }
                after_shown.is_some_and(|b| ideograph.contains(b))
            }
            '\u{FE0E}' | '\u{FE0F}' => after_shown.is_some_and(|b| emoji.contains(b)),
            '\u{FE00}'..='\u{FE0D}' => {
                after_shown.is_some_and(|b| ideograph.contains(b) || symbol(b))
            }
            // a Mongolian letter's form, or the vowel separator before a final a or e
            '\u{180B}'..='\u{180F}' => {
                after_shown.is_some_and(|b| ('\u{1820}'..='\u{18AA}').contains(&b))
            }
            // an emoji's form, then its joiner: a ZWJ sequence
            '\u{200D}' => after_shown.is_some() || matches!(before, Some('\u{FE0E}' | '\u{FE0F}')),
            // a word break where a line starts, as in Thai or Burmese pasted over lines (the
            // first line too, after the byte order mark it may begin with)
            '\u{200B}' => {
                after_shown.is_some()
                    || before.is_none_or(|b| line_break(b) || (b == '\u{FEFF}' && i == 2))
            }
            '\u{200C}' | '\u{00AD}' | '\u{2060}' | '\u{034F}' => after_shown.is_some(),
            '\u{200E}' | '\u{200F}' | '\u{061C}' => true,
            // the byte order mark a pasted text may begin with, there alone
            '\u{FEFF}' => before.is_none(),
            _ => {
                return Err((c, "characters shown as nothing that text does not use"));
            }
        };
        if !taken {
            if selector.contains(c) {
                return Err((c, "a variation selector after a character it does not vary"));
            }
            return Err((
                c,
                "a character shown as nothing that follows no character shown",
            ));
        }
        if run > 2 {
            return Err((c, "runs of characters shown as nothing"));
        }
    }
    if unseen > 8 + shown / 2 {
        let last = chars
            .iter()
            .rev()
            .find(|c| ignorable.contains(**c))
            .copied()
            .unwrap_or(' ');
        return Err((last, "that many characters shown as nothing"));
    }
    Ok(())
}

fn malformed(msg: impl Into<String>) -> RequestError {
    RequestError::Malformed(msg.into())
}

/// The message's fields.
fn parse_message(message: &Value) -> Result<Fields, RequestError> {
    let t = message
        .as_tuple()
        .ok_or_else(|| malformed("message is not a tuple"))?;
    const FIELDS: [&str; 7] = [
        "action",
        "data-types",
        "device",
        "issued-at",
        "nonce",
        "patient",
        "reason",
    ];
    for k in t.keys() {
        if !FIELDS.contains(&k.as_str()) {
            return Err(malformed(format!("message has an unknown field {k:?}")));
        }
    }
    let get = |name: &str| {
        t.get(name)
            .ok_or_else(|| malformed(format!("message lacks {name:?}")))
    };
    match get("action")? {
        Value::Ascii(a) if a == "break-glass" => {}
        other => {
            return Err(malformed(format!(
                "action must be \"break-glass\", got {other}"
            )))
        }
    }
    let patient = match get("patient")? {
        Value::Buffer(b) if b.len() == 32 => {
            PatientId(b.as_slice().try_into().map_err(|_| malformed("patient"))?)
        }
        _ => return Err(malformed("patient must be a 32-byte buffer")),
    };
    let data_types = match get("data-types")? {
        Value::List(items) if !items.is_empty() && items.len() <= MAX_DATA_TYPES => {
            let mut out: Vec<DataType> = Vec::with_capacity(items.len());
            for item in items {
                let Value::Ascii(s) = item else {
                    return Err(malformed("data-types must be strings"));
                };
                let dt: DataType = s
                    .parse()
                    .map_err(|_| malformed(format!("unknown data type {s:?}")))?;
                if out.contains(&dt) {
                    return Err(malformed(format!("data type {s:?} is named twice")));
                }
                out.push(dt);
            }
            out
        }
        Value::List(_) => {
            return Err(malformed(format!(
                "data-types must name 1 to {MAX_DATA_TYPES} data types"
            )))
        }
        _ => return Err(malformed("data-types must be a list")),
    };
    let reason = match get("reason")? {
        Value::Utf8(r) if !r.trim().is_empty() && r.chars().count() <= MAX_REASON_CHARS => {
            readable_reason(r)?;
            r.clone()
        }
        Value::Utf8(_) => {
            return Err(malformed(format!(
                "reason must be 1 to {MAX_REASON_CHARS} characters"
            )))
        }
        _ => return Err(malformed("reason must be a string-utf8")),
    };
    let uint = |name: &str| -> Result<u64, RequestError> {
        match get(name)? {
            Value::UInt(u) => {
                u64::try_from(*u).map_err(|_| malformed(format!("{name} is too large")))
            }
            _ => Err(malformed(format!("{name} must be a uint"))),
        }
    };
    let nonce = uint("nonce")?;
    let issued_at = uint("issued-at")?;
    let device = match t.get("device") {
        None | Some(Value::None) => None,
        Some(Value::Some(d)) => match d.as_ref() {
            Value::Ascii(s) if !s.is_empty() && s.len() <= MAX_DEVICE_CHARS => Some(s.clone()),
            _ => {
                return Err(malformed(format!(
                    "device must be 1 to {MAX_DEVICE_CHARS} ASCII characters"
                )))
            }
        },
        Some(_) => return Err(malformed("device must be (optional (string-ascii 64))")),
    };
    Ok(Fields {
        patient,
        data_types,
        reason,
        nonce,
        issued_at,
        device,
    })
}

/// Builds and signs a request as a tablet would (tests, benchmarks and `breakglass demo`).
pub fn sign(key: &secp256k1::SecretKey, chain_id: u32, message: &Value) -> serde_json::Value {
    let hash = sip018::message_hash(&domain(chain_id), message);
    serde_json::json!({
        "message": message.to_hex(),
        "signature": format!("0x{}", hex::encode(sip018::sign(&hash, key))),
    })
}

/// The message tuple for a request.
pub fn message(
    patient: &PatientId,
    data_types: &[&str],
    reason: &str,
    nonce: u64,
    issued_at: u64,
    device: Option<&str>,
) -> Value {
    Value::tuple([
        ("action", Value::ascii("break-glass")),
        ("patient", Value::buffer(patient.0)),
        (
            "data-types",
            Value::List(data_types.iter().map(|d| Value::ascii(d)).collect()),
        ),
        ("reason", Value::Utf8(reason.to_string())),
        ("nonce", Value::UInt(nonce.into())),
        ("issued-at", Value::UInt(issued_at.into())),
        (
            "device",
            device.map_or(Value::None, |d| Value::Some(Box::new(Value::ascii(d)))),
        ),
    ])
}
