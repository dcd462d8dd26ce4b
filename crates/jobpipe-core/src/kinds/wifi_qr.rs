//! `wifi-qr`: a QR code that joins a phone to a WiFi network, as a PNG.
//!
//! The payload is the de-facto `WIFI:` format phones read: `WIFI:T:WPA;S:<ssid>;P:<password>;H:true;;`, with
//! `\`, `;`, `,`, `:` and `"` escaped by a backslash in the SSID and password, and a value that could be
//! read as hex (`CAFE`, `1234`) in double quotes, as the format asks, so a phone takes it as text. The one
//! exception is a WEP key of 10 or 26 hex digits, which is the key in hex and is written bare.

use serde_json::{Value, json};

use super::{BoxFuture, InputError, JobContext, JobKind, check_fields, optional_bool, optional_string};
use crate::job::JobError;
use crate::kinds::raster;

pub struct WifiQr;

/// Pixels per QR module and the quiet zone around the code, in modules.
const MODULE_PX: usize = 10;
const QUIET_ZONE: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WifiInput {
    pub ssid: String,
    pub password: Option<String>,
    pub encryption: Encryption,
    pub hidden: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    Wpa,
    Wep,
    None,
}

pub fn parse_input(input: &Value) -> Result<WifiInput, InputError> {
    check_fields(input, &["ssid", "password", "encryption", "hidden"])?;
    let ssid = optional_string(input, "ssid")?.ok_or_else(|| InputError::new("input.ssid", "is required"))?;
    if ssid.is_empty() || ssid.len() > 32 {
        return Err(InputError::new("input.ssid", "must be 1 to 32 bytes"));
    }
    let encryption = match optional_string(input, "encryption")?.as_deref() {
        None | Some("WPA") => Encryption::Wpa,
        Some("WEP") => Encryption::Wep,
        Some("nopass") => Encryption::None,
        Some(_) => return Err(InputError::new("input.encryption", "must be WPA, WEP or nopass")),
    };
    let password = optional_string(input, "password")?;
    match (encryption, &password) {
        (Encryption::None, Some(_)) => {
            return Err(InputError::new("input.password", "must be absent when encryption is nopass"));
        }
        (Encryption::Wpa, None) | (Encryption::Wep, None) => {
            return Err(InputError::new("input.password", "is required for WPA and WEP networks"));
        }
        // IEEE 802.11i: a passphrase is 8 to 63 printable ASCII characters.
        (Encryption::Wpa, Some(p)) if !(8..=63).contains(&p.len()) || !p.bytes().all(printable_ascii) => {
            return Err(InputError::new("input.password", "a WPA password has 8 to 63 printable ASCII characters"));
        }
        (Encryption::Wep, Some(p)) if ![5, 10, 13, 26].contains(&p.len()) || !p.bytes().all(printable_ascii) => {
            return Err(InputError::new("input.password", "a WEP key has 5, 10, 13 or 26 printable ASCII characters"));
        }
        _ => {}
    }
    Ok(WifiInput { ssid, password, encryption, hidden: optional_bool(input, "hidden")?.unwrap_or(false) })
}

fn printable_ascii(byte: u8) -> bool {
    (0x20..=0x7e).contains(&byte)
}

/// A value of the `WIFI:` format: escaped, and quoted when a reader could take it for hex digits.
pub fn field_value(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) { format!("\"{text}\"") } else { escape(text) }
}

/// Whether a WEP key is given in hex: 10 or 26 hex digits (5 or 13 characters are a text key).
fn is_wep_hex_key(key: &str) -> bool {
    matches!(key.len(), 10 | 26) && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Escapes the characters the `WIFI:` format gives meaning to.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | ';' | ',' | ':' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn wifi_payload(input: &WifiInput) -> String {
    let kind = match input.encryption {
        Encryption::Wpa => "WPA",
        Encryption::Wep => "WEP",
        Encryption::None => "nopass",
    };
    let mut payload = format!("WIFI:T:{kind};S:{};", field_value(&input.ssid));
    if let Some(password) = &input.password {
        // A WEP key of 10 or 26 hex digits is the key itself (40 or 104 bits): written bare, so phones read
        // it as hex. Quoting it would make them take the digits as a 10- or 26-character text key.
        let value = if input.encryption == Encryption::Wep && is_wep_hex_key(password) {
            password.clone()
        } else {
            field_value(password)
        };
        payload.push_str(&format!("P:{value};"));
    }
    if input.hidden {
        payload.push_str("H:true;");
    }
    payload.push(';');
    payload
}

/// Renders `payload` as a QR code PNG (black modules on white, with a quiet zone).
pub fn render_qr(payload: &str) -> Result<(Vec<u8>, u32), String> {
    let code = qrcode::QrCode::with_error_correction_level(payload.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| format!("cannot encode as a QR code: {e}"))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * MODULE_PX;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (index % modules + QUIET_ZONE, index / modules + QUIET_ZONE);
        for y in my * MODULE_PX..(my + 1) * MODULE_PX {
            pixels[y * side + mx * MODULE_PX..y * side + (mx + 1) * MODULE_PX].fill(0);
        }
    }
    Ok((raster::encode_grey(side as u32, side as u32, &pixels)?, side as u32))
}

impl JobKind for WifiQr {
    fn name(&self) -> &'static str {
        "wifi-qr"
    }

    fn validate(&self, input: &Value) -> Result<(), InputError> {
        parse_input(input).map(|_| ())
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "A WiFi network to encode as a QR code (PNG in S3). A WPA password has 8 to 63 \
                characters, a WEP key 5, 10, 13 or 26; a nopass network has no password (else 422).",
            "required": ["ssid"],
            "additionalProperties": false,
            "properties": {
                "ssid": {"type": "string", "minLength": 1, "maxLength": 32, "description": "1 to 32 bytes of UTF-8."},
                "encryption": {"type": ["string", "null"], "enum": ["WPA", "WEP", "nopass", null], "default": "WPA"},
                "password": {"type": ["string", "null"], "minLength": 5, "maxLength": 63, "pattern": "^[ -~]*$",
                    "description": "Printable ASCII."},
                "hidden": {"type": ["boolean", "null"], "default": false}
            }
        })
    }

    fn run<'a>(&'a self, ctx: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let input = parse_input(ctx.input).map_err(|e| JobError::permanent("invalid_input", e.to_string()))?;
            let (png, side) = render_qr(&wifi_payload(&input)).map_err(|e| JobError::permanent("qr_failed", e))?;
            ctx.progress.report(60).await;
            let metadata = [("job-id", ctx.job.job_id.to_string()), ("owner", ctx.job.owner.clone())];
            let stored =
                ctx.results.put_result_object(&ctx.job.job_id, "wifi-qr.png", png, "image/png", &metadata).await?;
            // The password is not repeated in the result.
            Ok(json!({
                "key": stored.key,
                "contentType": stored.content_type,
                "bytes": stored.size,
                "width": side,
                "height": side,
                "ssid": input.ssid,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> String {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        let (w, h) = (info.width as usize, info.height as usize);
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buffer[y * w + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        grids[0].decode().unwrap().1
    }

    #[test]
    fn round_trips_through_a_decoder_with_special_characters() {
        let input = parse_input(&json!({
            "ssid": r#"Café; "Guest", floor:2 \ east"#,
            "password": r#"p;a,s:s\w"o"#,
            "encryption": "WPA",
            "hidden": true
        }))
        .unwrap();
        let payload = wifi_payload(&input);
        assert_eq!(payload, r#"WIFI:T:WPA;S:Café\; \"Guest\"\, floor\:2 \\ east;P:p\;a\,s\:s\\w\"o;H:true;;"#);
        let (png, side) = render_qr(&payload).unwrap();
        assert_eq!(raster::png_dimensions(&png).unwrap(), (side, side));
        assert_eq!(decode(&png), payload);

        // Values a phone could read as hex bytes are quoted, so they stay text.
        let hex = parse_input(&json!({"ssid": "CAFE", "password": "12345678", "encryption": "WPA"})).unwrap();
        assert_eq!(wifi_payload(&hex), r#"WIFI:T:WPA;S:"CAFE";P:"12345678";;"#);
        assert_eq!(decode(&render_qr(&wifi_payload(&hex)).unwrap().0), wifi_payload(&hex));
        // A WEP key in hex is the key itself, so it stays bare; a text key that looks like hex is quoted.
        let wep_hex = parse_input(&json!({"ssid": "lab", "password": "0123456789", "encryption": "WEP"})).unwrap();
        assert_eq!(wifi_payload(&wep_hex), "WIFI:T:WEP;S:lab;P:0123456789;;");
        let wep_104 = "0123456789abcdef0123456789";
        let wep_104_input = parse_input(&json!({"ssid": "lab", "password": wep_104, "encryption": "WEP"})).unwrap();
        assert_eq!(wifi_payload(&wep_104_input), format!("WIFI:T:WEP;S:lab;P:{wep_104};;"));
        let wep_text = parse_input(&json!({"ssid": "lab", "password": "CAFE1", "encryption": "WEP"})).unwrap();
        assert_eq!(wifi_payload(&wep_text), r#"WIFI:T:WEP;S:lab;P:"CAFE1";;"#);
        let mixed = parse_input(&json!({"ssid": "CAFE 2", "password": "deadbeef!", "encryption": "WPA"})).unwrap();
        assert_eq!(wifi_payload(&mixed), "WIFI:T:WPA;S:CAFE 2;P:deadbeef!;;");

        let open = parse_input(&json!({"ssid": "Open Cafe", "encryption": "nopass"})).unwrap();
        assert_eq!(wifi_payload(&open), "WIFI:T:nopass;S:Open Cafe;;");
        assert_eq!(decode(&render_qr(&wifi_payload(&open)).unwrap().0), "WIFI:T:nopass;S:Open Cafe;;");
    }

    #[test]
    fn validates_every_field() {
        let check = |input: Value, expected: Result<(), &str>| {
            assert_eq!(parse_input(&input).map(|_| ()).map_err(|e| e.field), expected.map_err(String::from), "{input}");
        };
        check(json!({"ssid": "home", "password": "correct horse"}), Ok(()));
        check(json!({"ssid": "home", "password": "12345", "encryption": "WEP"}), Ok(()));
        check(json!({"ssid": "home", "encryption": "nopass", "hidden": true}), Ok(()));
        check(json!({"password": "correct horse"}), Err("input.ssid"));
        check(json!({"ssid": "", "password": "correct horse"}), Err("input.ssid"));
        check(json!({"ssid": "x".repeat(33), "password": "correct horse"}), Err("input.ssid"));
        check(json!({"ssid": 7, "password": "correct horse"}), Err("input.ssid"));
        check(json!({"ssid": "home"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "short"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "x".repeat(64)}), Err("input.password"));
        // 8 to 63 characters, not bytes, and only printable ASCII: a phone cannot type "pässwörd".
        check(json!({"ssid": "home", "password": "pässwörd"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "tab\there!"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "ééééé", "encryption": "WEP"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "1234", "encryption": "WEP"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "secret123", "encryption": "nopass"}), Err("input.password"));
        check(json!({"ssid": "home", "password": "correct horse", "encryption": "WPA3"}), Err("input.encryption"));
        check(json!({"ssid": "home", "password": "correct horse", "hidden": "yes"}), Err("input.hidden"));
        check(json!({"ssid": "home", "password": "correct horse", "colour": "red"}), Err("input.colour"));
    }
}
