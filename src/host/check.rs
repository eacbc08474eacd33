//! What the host checks of a frame before it is accepted, and how two renders of one frame are compared.
//!
//! Both read image files a volunteer sent, so both run on blocking threads (never the event loop) and decode within
//! limits read from the header first: a "PNG" announcing 100,000 × 100,000 pixels is refused before anything is
//! allocated. Formats the `image` crate decodes (PNG, JPEG, OpenEXR, TIFF, BMP, TGA, WebP, HDR) are decoded in full,
//! so a truncated file is caught; the others Blender writes (JPEG 2000, DPX, Cineon, SGI) are checked by their
//! signature only, and cannot be compared.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Widest and highest frame accepted (Blender's own limit is 65,536; 16K is well past any real render).
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels decoded (268 M: a 16K × 16K frame).
pub const MAX_PIXELS: u64 = 1 << 28;
/// Most memory one decode may take (a 16K × 16K RGBA float image is 4 GiB; this refuses such frames' checks).
pub const MAX_DECODE_ALLOC: u64 = 2 << 30;

/// A pixel differs when a channel differs by more than this many 8-bit levels (1 vs 2 threads gave 0 levels here;
/// other CPUs may round a value to the next level).
pub const LEVELS_TOLERANCE: f32 = 2.0;
/// For float images, a channel differs when it differs by more than this, relative to the larger value (absolute
/// below 1.0). 1 vs 2+ threads changed values by at most 2.7e-4; one sample less, by more than 1e-3 in 65 % of them.
pub const FLOAT_TOLERANCE: f32 = 1e-3;
/// Two renders agree when at most this fraction of pixels differ: 15 samples instead of 16 made 2.4 % differ.
pub const MAX_DIFFERING: f64 = 0.005;

/// Why a frame file is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameProblem {
    #[error("the file is empty")]
    Empty,
    #[error("it is not a .{ext} image (its content is {found})")]
    WrongFormat { ext: String, found: String },
    #[error("it is {width}×{height} pixels, the job renders {want_width}×{want_height}")]
    WrongSize { width: u32, height: u32, want_width: u32, want_height: u32 },
    #[error("it is {width}×{height} pixels, more than the host decodes ({MAX_SIDE} a side, {MAX_PIXELS} pixels)")]
    TooLarge { width: u32, height: u32 },
    #[error("it does not decode as .{ext}: {reason}")]
    Undecodable { ext: String, reason: String },
    #[error("it cannot be read: {0}")]
    Unreadable(String),
}

/// A checked frame: its size and, for formats the host decodes, its pixels (for comparisons).
pub struct Checked {
    pub width: u32,
    pub height: u32,
    pub image: Option<DynamicImage>,
}

/// Checks that `path` holds a whole image of the format `ext` names (and, when `want` is known, of that size).
pub fn check_frame(path: &Path, ext: &str, want: Option<(u32, u32)>) -> Result<Checked, FrameProblem> {
    let unreadable = |e: std::io::Error| FrameProblem::Unreadable(e.to_string());
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    let head = head(path)?;
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(unreadable)?);
    check_image(file, size, &head, ext, want)
}

/// [`check_frame`] of a frame's bytes in memory (a small frame just received, read no second time).
pub fn check_frame_bytes(bytes: &[u8], ext: &str, want: Option<(u32, u32)>) -> Result<Checked, FrameProblem> {
    let head = &bytes[..bytes.len().min(HEAD)];
    check_image(std::io::Cursor::new(bytes), bytes.len() as u64, head, ext, want)
}

/// The check itself, of an image of `size` bytes read from `reader`, whose first bytes are `head`.
fn check_image<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    size: u64,
    head: &[u8],
    ext: &str,
    want: Option<(u32, u32)>,
) -> Result<Checked, FrameProblem> {
    let ext = ext.to_ascii_lowercase();
    if size == 0 {
        return Err(FrameProblem::Empty);
    }
    let Some(format) = ImageFormat::from_extension(&ext).filter(decodable) else {
        check_signature(head, &ext)?;
        return Ok(Checked { width: 0, height: 0, image: None });
    };
    match image::guess_format(head) {
        // TGA has no signature: the content says nothing, so the extension stands.
        Err(_) if format == ImageFormat::Tga => {}
        Ok(found) if found == format => {}
        found => {
            let found = found.map_or("unrecognised".to_string(), |f| format!("{f:?}"));
            return Err(FrameProblem::WrongFormat { ext, found });
        }
    }
    let mut reader = ImageReader::with_format(reader, format);
    reader.no_limits();
    let undecodable = |e: image::ImageError| FrameProblem::Undecodable { ext: ext.clone(), reason: e.to_string() };
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    if let Some((want_width, want_height)) = want.filter(|&w| w != (width, height)) {
        return Err(FrameProblem::WrongSize { width, height, want_width, want_height });
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(FrameProblem::TooLarge { width, height });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    if limits.reserve(decoder.total_bytes()).and_then(|()| decoder.set_limits(limits)).is_err() {
        return Err(FrameProblem::TooLarge { width, height });
    }
    let image = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    Ok(Checked { width, height, image: Some(image) })
}

/// Whether frames with this extension are decoded (and so can be size-checked and compared) rather than only
/// checked by their signature.
pub fn comparable(ext: &str) -> bool {
    ImageFormat::from_extension(ext).is_some_and(|f| decodable(&f))
}

fn decodable(format: &ImageFormat) -> bool {
    use ImageFormat::*;
    matches!(format, Png | Jpeg | OpenExr | Tiff | Bmp | Tga | WebP | Hdr)
}

/// How many first bytes every signature fits in.
const HEAD: usize = 32;

/// The first bytes of a file, enough for every signature.
fn head(path: &Path) -> Result<Vec<u8>, FrameProblem> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(HEAD);
    let file = std::fs::File::open(path).map_err(|e| FrameProblem::Unreadable(e.to_string()))?;
    file.take(HEAD as u64).read_to_end(&mut head).map_err(|e| FrameProblem::Unreadable(e.to_string()))?;
    Ok(head)
}

/// The first bytes of the formats Blender writes that the host does not decode.
fn check_signature(head: &[u8], ext: &str) -> Result<(), FrameProblem> {
    let ok = match ext {
        "jp2" => head.starts_with(&[0, 0, 0, 0x0c, b'j', b'P', b' ', b' ']),
        "j2c" => head.starts_with(&[0xff, 0x4f, 0xff, 0x51]),
        "dpx" => head.starts_with(b"SDPX") || head.starts_with(b"XPDS"),
        "cin" => head.starts_with(&[0x80, 0x2a, 0x5f, 0xd7]) || head.starts_with(&[0xd7, 0x5f, 0x2a, 0x80]),
        "rgb" | "sgi" => head.starts_with(&[0x01, 0xda]),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameProblem::WrongFormat { ext: ext.to_string(), found: "something else".into() })
    }
}

/// How two renders of one frame differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Fraction of pixels with a channel beyond the tolerance (1.0 when the sizes differ).
    pub differing: f64,
    /// Largest difference of a channel, in 8-bit levels for 8-bit images, in value for float and 16-bit ones.
    pub largest: f32,
}

impl Difference {
    pub fn agrees(&self) -> bool {
        self.differing <= MAX_DIFFERING
    }
}

/// Compares two renders pixel by pixel within the tolerances above.
pub fn compare(a: &DynamicImage, b: &DynamicImage) -> Difference {
    if a.width() != b.width() || a.height() != b.height() {
        return Difference { differing: 1.0, largest: f32::INFINITY };
    }
    let float = is_float(a) || is_float(b);
    let (a, b) = (a.to_rgba32f(), b.to_rgba32f());
    let mut differing = 0u64;
    let mut largest = 0f32;
    for (pa, pb) in a.pixels().zip(b.pixels()) {
        let mut differs = false;
        for (x, y) in pa.0.iter().zip(pb.0.iter()) {
            let delta = (x - y).abs();
            let (delta, beyond) = if float {
                (delta, delta > FLOAT_TOLERANCE * x.abs().max(y.abs()).max(1.0) || delta.is_nan())
            } else {
                let levels = delta * 255.0;
                (levels, levels > LEVELS_TOLERANCE + 1e-3)
            };
            largest = largest.max(delta);
            differs |= beyond;
        }
        differing += u64::from(differs);
    }
    let pixels = u64::from(a.width()) * u64::from(a.height());
    Difference { differing: if pixels == 0 { 0.0 } else { differing as f64 / pixels as f64 }, largest }
}

fn is_float(image: &DynamicImage) -> bool {
    matches!(image, DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_))
        || matches!(image, DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_))
        || matches!(image, DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn png(dir: &Path, name: &str, image: &RgbaImage) -> std::path::PathBuf {
        let path = dir.join(name);
        image.save(&path).expect("write a test PNG");
        path
    }

    fn gradient(w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| Rgba([(x * 7) as u8, (y * 5) as u8, 128, 255]))
    }

    #[test]
    fn frames_are_refused_for_what_is_wrong_with_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = png(dir.path(), "good.png", &gradient(32, 24));
        let bytes = std::fs::read(&good).expect("read back");
        let write = |name: &str, data: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, data).expect("write");
            path
        };
        let empty = write("empty.png", b"");
        let truncated = write("cut.png", &bytes[..bytes.len() / 2]);
        let jpeg_named_png = {
            let path = dir.path().join("x.jpg");
            DynamicImage::ImageRgba8(gradient(32, 24)).to_rgb8().save(&path).expect("jpeg");
            write("jpeg.png", &std::fs::read(&path).expect("read"))
        };
        let text = write("text.exr", b"this is not an image at all");
        let not_dpx = write("frame.dpx", b"GIF89a....");
        let dpx = write("ok.dpx", b"SDPX and the rest");
        type Row<'a> = (&'a Path, &'a str, Option<(u32, u32)>, Result<(u32, u32), &'a str>);
        let table: Vec<Row> = vec![
            (&good, "png", Some((32, 24)), Ok((32, 24))),
            (&good, "PNG", None, Ok((32, 24))),
            (&good, "png", Some((64, 48)), Err("it is 32×24 pixels, the job renders 64×48")),
            (&empty, "png", None, Err("the file is empty")),
            (&truncated, "png", None, Err("it does not decode as .png")),
            (&jpeg_named_png, "png", None, Err("it is not a .png image (its content is Jpeg)")),
            (&text, "exr", None, Err("it is not a .exr image (its content is unrecognised)")),
            (&not_dpx, "dpx", None, Err("it is not a .dpx image")),
            (&dpx, "dpx", None, Ok((0, 0))),
        ];
        for (path, ext, want, expected) in table {
            let got = check_frame(path, ext, want).map(|c| (c.width, c.height)).map_err(|e| e.to_string());
            // The same file's bytes in memory (a small frame as it arrives) get the same answer.
            let in_memory = check_frame_bytes(&std::fs::read(path).expect("read"), ext, want);
            assert_eq!(in_memory.map(|c| (c.width, c.height)).map_err(|e| e.to_string()), got, "{}", path.display());
            match (got, expected) {
                (Ok(size), Ok(want)) => assert_eq!(size, want, "{}", path.display()),
                (Err(e), Err(want)) => assert!(e.starts_with(want), "{}: {e}", path.display()),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", path.display()),
            }
        }
    }

    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        // A valid PNG header announcing 100,000 × 100,000 pixels, then nothing.
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        png.extend_from_slice(&0u32.to_be_bytes());
        png.extend_from_slice(b"IDAT");
        png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("huge.png");
        std::fs::write(&path, &png).expect("write");
        let err = check_frame(&path, "png", None).err().expect("refused");
        assert_eq!(err, FrameProblem::TooLarge { width: 100_000, height: 100_000 });
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn renders_agree_within_the_tolerance_only() {
        let base = gradient(100, 10);
        let mut near = base.clone();
        let mut off = base.clone();
        // 2 levels on every pixel: within the tolerance. 3 levels on 1 % of pixels: beyond it.
        for (i, p) in near.pixels_mut().enumerate() {
            p.0[0] = p.0[0].saturating_add(2);
            if i % 100 == 0 {
                off.put_pixel((i % 100) as u32, (i / 100) as u32, Rgba([p.0[0].wrapping_add(30), 0, 0, 255]));
            }
        }
        let img = |i: &RgbaImage| DynamicImage::ImageRgba8(i.clone());
        assert!(compare(&img(&base), &img(&base)).agrees());
        let d = compare(&img(&base), &img(&near));
        assert!(d.agrees() && d.differing == 0.0, "{d:?}");
        let d = compare(&img(&base), &img(&off));
        assert!(!d.agrees() && (d.differing - 0.01).abs() < 1e-9, "{d:?}");
        let small = DynamicImage::ImageRgba8(gradient(50, 10));
        assert!(!compare(&img(&base), &small).agrees());

        let float = |v: f32| DynamicImage::ImageRgba32F(image::Rgba32FImage::from_pixel(4, 4, Rgba([v, v, v, 1.0])));
        assert!(compare(&float(0.5), &float(0.5 + 2.7e-4)).agrees(), "threads' differences are tolerated");
        assert!(!compare(&float(0.5), &float(0.503)).agrees(), "a sample less is not");
        assert!(compare(&float(100.0), &float(100.05)).agrees(), "relative above 1.0");
    }
}
