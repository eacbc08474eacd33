//! Frames made showable: thumbnails for the page and full-size PNGs of formats browsers cannot show (EXR, TIFF,
//! TGA, HDR). Float images are linear light, as Blender writes them: clamped and sRGB-encoded like Blender's
//! "Standard" view, so an EXR looks like the PNG of the same render; 16-bit images are scaled to 8 bits.
//!
//! Decoding is slow and memory-hungry, so it runs on blocking threads, at most [`MAX_DECODES`] at once, and only
//! after the header says the image is within [`MAX_SIDE`] and [`MAX_PIXELS`].
//!
//! The cache is in memory rather than under RENDERDIR: the dashboard never writes to the farm's folders, and a
//! restart only costs re-making the few dozen thumbnails the page shows.

use std::{
    collections::HashMap,
    io::Cursor,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::body::Bytes;
use image::{
    codecs::{jpeg::JpegEncoder, png::PngEncoder},
    imageops::FilterType,
    DynamicImage, ImageDecoder, ImageReader, Limits, Rgb32FImage, RgbImage, Rgba32FImage, RgbaImage,
};

use super::{error::DashboardError, files::FrameFile};

/// Thumbnails fit in this square (at most this wide and this high).
pub const THUMB_SIZE: u32 = 320;
/// Widest and highest image decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels decoded (100 M: an 8K frame is 33 M).
pub const MAX_PIXELS: u64 = 100_000_000;
/// Most memory one decoder may ask for (an 8K RGBA float EXR needs about 530 MiB).
const MAX_DECODE_ALLOC: u64 = 1 << 30;
/// Images decoded at once (each may take up to [`MAX_DECODE_ALLOC`]).
pub const MAX_DECODES: usize = 2;
/// Entries kept in the cache, and their total size.
const CACHE_ENTRIES: usize = 256;
const CACHE_BYTES: usize = 64 << 20;
/// Full-size conversions larger than this are not cached.
const MAX_CACHED_VIEW: usize = 16 << 20;
const LIMIT_TEXT: &str = "16384×16384, 100 M pixels";

/// Which picture of a frame file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rendition {
    Thumbnail,
    /// Full size, as PNG.
    FullPng,
}

/// An encoded picture.
#[derive(Debug, Clone)]
pub struct Picture {
    pub bytes: Bytes,
    pub content_type: &'static str,
}

/// Makes a picture of a frame file. Blocking: call it from `spawn_blocking`.
pub fn render(file: &FrameFile, rendition: Rendition) -> Result<Picture, DashboardError> {
    let image = decode(file)?;
    let image = match rendition {
        Rendition::Thumbnail if image.width() > THUMB_SIZE || image.height() > THUMB_SIZE => {
            // Not `thumbnail()`: in image 0.25 it brightens float images by 0.5.
            image.resize(THUMB_SIZE, THUMB_SIZE, FilterType::Triangle)
        }
        _ => image,
    };
    let image = to_8_bit(image);
    let mut out = Cursor::new(Vec::new());
    let encoded = if rendition == Rendition::Thumbnail && !image.color().has_alpha() {
        image.write_with_encoder(JpegEncoder::new_with_quality(&mut out, 85)).map(|_| "image/jpeg")
    } else {
        image.write_with_encoder(PngEncoder::new(&mut out)).map(|_| "image/png")
    };
    let content_type = encoded.map_err(|e| DashboardError::Decode(e.to_string()))?;
    Ok(Picture { bytes: Bytes::from(out.into_inner()), content_type })
}

/// Decodes a frame file, refusing from its header alone an image above the limits.
fn decode(file: &FrameFile) -> Result<DynamicImage, DashboardError> {
    let reader = ImageReader::open(&file.path).map_err(|_| DashboardError::NoSuchFrame)?;
    // The content decides the format; the extension only when the content says nothing (TGA has no signature).
    let mut reader = reader.with_guessed_format()?;
    if reader.format().is_none() {
        return Err(DashboardError::UnsupportedFormat(file.ext.clone()));
    }
    // The header is read without limits, so a refusal can name the size; the limits apply to the decoding.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(e, file))?;
    let (width, height) = decoder.dimensions();
    let too_large = DashboardError::ImageTooLarge { width, height, limit: LIMIT_TEXT };
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let limited = limits.reserve(decoder.total_bytes()).and_then(|()| decoder.set_limits(limits));
    if limited.is_err() {
        return Err(too_large);
    }
    DynamicImage::from_decoder(decoder).map_err(|e| decode_error(e, file))
}

fn decode_error(e: image::ImageError, file: &FrameFile) -> DashboardError {
    match e {
        image::ImageError::Unsupported(_) => DashboardError::UnsupportedFormat(file.ext.clone()),
        e => DashboardError::Decode(e.to_string()),
    }
}

/// 8 bits per channel, ready for PNG or JPEG: float (linear) images are clamped and sRGB-encoded, 16-bit ones
/// scaled.
fn to_8_bit(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageRgb32F(float) => DynamicImage::ImageRgb8(linear_to_srgb_rgb(&float)),
        DynamicImage::ImageRgba32F(float) => DynamicImage::ImageRgba8(linear_to_srgb_rgba(&float)),
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

fn linear_to_srgb_rgb(float: &Rgb32FImage) -> RgbImage {
    let mut out = RgbImage::new(float.width(), float.height());
    for (o, p) in out.pixels_mut().zip(float.pixels()) {
        o.0 = p.0.map(srgb_u8);
    }
    out
}

fn linear_to_srgb_rgba(float: &Rgba32FImage) -> RgbaImage {
    let mut out = RgbaImage::new(float.width(), float.height());
    for (o, p) in out.pixels_mut().zip(float.pixels()) {
        let [r, g, b, a] = p.0;
        // Alpha is coverage, not light: no gamma.
        o.0 = [srgb_u8(r), srgb_u8(g), srgb_u8(b), unit_u8(a)];
    }
    out
}

/// A linear light value as an sRGB-encoded byte (clamped to 0..1 first; NaN is black).
pub fn srgb_u8(linear: f32) -> u8 {
    let c = if linear.is_nan() { 0.0 } else { linear.clamp(0.0, 1.0) };
    let encoded = if c <= 0.003_130_8 { 12.92 * c } else { 1.055 * c.powf(1.0 / 2.4) - 0.055 };
    unit_u8(encoded)
}

fn unit_u8(v: f32) -> u8 {
    // The cast saturates, and NaN becomes 0.
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// What a cached picture was made from: the same path with another modification time or size is another frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub path: PathBuf,
    pub modified: Option<SystemTime>,
    pub len: u64,
    pub rendition: Rendition,
}

impl CacheKey {
    pub fn of(file: &FrameFile, rendition: Rendition) -> Self {
        Self { path: file.path.clone(), modified: file.modified, len: file.len, rendition }
    }
}

/// A bounded least-recently-used cache of pictures, shared by the request handlers.
#[derive(Debug, Clone, Default)]
pub struct PictureCache {
    inner: Arc<Mutex<Lru>>,
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<CacheKey, (Picture, u64)>,
    /// Incremented on each use; an entry's stamp says when it was last used.
    clock: u64,
    bytes: usize,
}

impl PictureCache {
    pub fn get(&self, key: &CacheKey) -> Option<Picture> {
        let mut lru = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lru.clock += 1;
        let clock = lru.clock;
        let (picture, used) = lru.entries.get_mut(key)?;
        *used = clock;
        Some(picture.clone())
    }

    pub fn insert(&self, key: CacheKey, picture: Picture) {
        if key.rendition == Rendition::FullPng && picture.bytes.len() > MAX_CACHED_VIEW {
            return;
        }
        let mut lru = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lru.clock += 1;
        let clock = lru.clock;
        lru.bytes += picture.bytes.len();
        if let Some((old, _)) = lru.entries.insert(key, (picture, clock)) {
            lru.bytes -= old.bytes.len();
        }
        // A linear scan for the oldest: a few hundred entries, far cheaper than the decode that filled one.
        while lru.entries.len() > CACHE_ENTRIES || lru.bytes > CACHE_BYTES {
            let Some(oldest) = lru.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some((old, _)) = lru.entries.remove(&oldest) {
                lru.bytes -= old.bytes.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> CacheKey {
        CacheKey { path: format!("/r/j/{n:04}.png").into(), modified: None, len: 1, rendition: Rendition::Thumbnail }
    }

    fn picture(len: usize) -> Picture {
        Picture { bytes: Bytes::from(vec![0; len]), content_type: "image/png" }
    }

    #[test]
    fn cache_evicts_the_least_recently_used() {
        let cache = PictureCache::default();
        for n in 0..CACHE_ENTRIES {
            cache.insert(key(n), picture(10));
        }
        assert!(cache.get(&key(0)).is_some());
        cache.insert(key(CACHE_ENTRIES), picture(10));
        assert!(cache.get(&key(0)).is_some(), "just used");
        assert!(cache.get(&key(1)).is_none(), "least recently used");
        assert!(cache.get(&key(CACHE_ENTRIES)).is_some());
    }

    #[test]
    fn cache_is_bounded_in_bytes() {
        let cache = PictureCache::default();
        for n in 0..8 {
            cache.insert(key(n), picture(CACHE_BYTES / 4));
        }
        let lru = cache.inner.lock().unwrap();
        assert!(lru.bytes <= CACHE_BYTES && lru.entries.len() == 4, "{} bytes", lru.bytes);
    }

    #[test]
    fn float_is_clamped_and_srgb_encoded() {
        assert_eq!(srgb_u8(0.0), 0);
        assert_eq!(srgb_u8(1.0), 255);
        assert_eq!(srgb_u8(7.5), 255);
        assert_eq!(srgb_u8(-1.0), 0);
        assert_eq!(srgb_u8(f32::NAN), 0);
        assert_eq!(srgb_u8(0.2159), 128);
        let float = Rgba32FImage::from_pixel(2, 2, image::Rgba([0.5, 0.5, 0.5, 0.5]));
        assert_eq!(to_8_bit(DynamicImage::ImageRgba32F(float)).to_rgba8().get_pixel(0, 0).0, [188, 188, 188, 128]);
    }

    #[test]
    fn sixteen_bit_is_scaled() {
        let deep = image::ImageBuffer::from_pixel(2, 2, image::Rgb([0u16, 0x8080, 0xffff]));
        let shallow = to_8_bit(DynamicImage::ImageRgb16(deep));
        assert_eq!(shallow.as_rgb8().map(|i| i.get_pixel(1, 1).0), Some([0, 128, 255]));
    }
}
