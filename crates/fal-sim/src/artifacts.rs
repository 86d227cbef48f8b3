//! Real output bytes: a small valid `.safetensors` LoRA file and PNG/JPEG images.

use sha2::{Digest, Sha256};

/// Rank and width of the simulated LoRA tensors (tiny, but a valid file).
const LORA_RANK: usize = 4;
const LORA_WIDTH: usize = 64;

/// A safetensors file: u64 little-endian header length, JSON header (padded with spaces to a
/// multiple of 8), then the raw little-endian F32 tensor data.
pub(crate) fn safetensors_lora(request_id: &str, trigger: Option<&str>) -> Vec<u8> {
    let tensors = [
        (
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
            [LORA_RANK, LORA_WIDTH],
        ),
        (
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight",
            [LORA_WIDTH, LORA_RANK],
        ),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut seed = Sha256::digest(request_id.as_bytes()).to_vec();
    for (name, shape) in tensors {
        let start = data.len();
        for i in 0..shape[0] * shape[1] {
            if i % 8 == 0 {
                seed = Sha256::digest(&seed).to_vec();
            }
            let byte = seed[i % 32] as f32;
            let value = (byte - 128.0) / 4096.0;
            data.extend_from_slice(&value.to_le_bytes());
        }
        header.insert(
            name.into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut metadata = serde_json::json!({"format": "pt", "request_id": request_id});
    if let Some(trigger) = trigger {
        metadata["trigger"] = trigger.into();
    }
    header.insert("__metadata__".into(), metadata);
    let mut header_text = serde_json::Value::Object(header).to_string();
    while header_text.len() % 8 != 0 {
        header_text.push(' ');
    }
    let mut file = Vec::with_capacity(8 + header_text.len() + data.len());
    file.extend_from_slice(&(header_text.len() as u64).to_le_bytes());
    file.extend_from_slice(header_text.as_bytes());
    file.extend_from_slice(&data);
    file
}

/// RGB pixels: a gradient tinted by `seed`, so images differ per seed and index.
fn pixels(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let tint = seed.to_le_bytes();
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            out.push(((x * 255 / width.max(1)) as u8).wrapping_add(tint[0]));
            out.push(((y * 255 / height.max(1)) as u8).wrapping_add(tint[1]));
            out.push(tint[2]);
        }
    }
    out
}

pub(crate) fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("in-memory PNG header");
        writer
            .write_image_data(&pixels(width, height, seed))
            .expect("in-memory PNG data");
    }
    out
}

pub(crate) fn jpeg(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = jpeg_encoder::Encoder::new(&mut out, 85);
    encoder
        .encode(
            &pixels(width, height, seed),
            width.min(u16::MAX as u32) as u16,
            height.min(u16::MAX as u32) as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("in-memory JPEG");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_header_is_consistent() {
        let file = safetensors_lora("r", Some("TOK"));
        let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&file[8..8 + len]).unwrap();
        let data_len = file.len() - 8 - len;
        let mut end = 0;
        for (name, tensor) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            end = end.max(tensor["data_offsets"][1].as_u64().unwrap() as usize);
        }
        assert_eq!(end, data_len);
    }

    #[test]
    fn images_have_their_magic_bytes() {
        assert!(png(8, 4, 1).starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(jpeg(8, 4, 1).starts_with(&[0xFF, 0xD8, 0xFF]));
    }
}
