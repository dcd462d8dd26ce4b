//! Small PNG helpers for kinds that produce images.

/// Encodes an 8-bit greyscale image (`pixels.len() == width * height`).
pub fn encode_grey(width: u32, height: u32, pixels: &[u8]) -> Result<Vec<u8>, String> {
    encode(width, height, png::ColorType::Grayscale, pixels)
}

/// Encodes an 8-bit RGB image (`pixels.len() == width * height * 3`).
pub fn encode_rgb(width: u32, height: u32, pixels: &[u8]) -> Result<Vec<u8>, String> {
    encode(width, height, png::ColorType::Rgb, pixels)
}

fn encode(width: u32, height: u32, color: png::ColorType, pixels: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The width and height of a PNG, or why the bytes are not one.
pub fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let info = reader.info();
    Ok((info.width, info.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reads_back_dimensions() {
        let png = encode_rgb(32, 16, &vec![200; 32 * 16 * 3]).unwrap();
        assert_eq!(png_dimensions(&png), Ok((32, 16)));
        assert!(png_dimensions(b"GIF89a").is_err());
        assert!(encode_grey(4, 4, &[0; 3]).is_err(), "too few pixels is an error, not a panic");
    }
}
