//! Checks on names and texts that come from peers before they become paths, log lines or page text. Part of
//! [`crate::protocol`].

use super::MAX_NAME;

/// Checks the name of an [`super::ExtraOutput`] before it becomes a path under the job's render folder: relative, plain
/// `/`-separated components, at most 8 deep and 1024 bytes, an image extension, and not shaped like a frame file
/// (`0012.png`) or the host's own hidden files.
pub fn check_output_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 1024 {
        return Err("empty or over 1024 bytes");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 8 {
        return Err("more than 8 folders deep");
    }
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." || part.starts_with('.') || part.len() > 255 {
            return Err("an empty, hidden, '.' or '..' component");
        }
        if part.chars().any(|c| c == '\\' || c == '\0' || c.is_control()) {
            return Err("a backslash, NUL or control character");
        }
    }
    let first_stem = parts[0].split('.').next().unwrap_or_default();
    if first_stem.bytes().all(|b| b.is_ascii_digit()) {
        return Err("named like a frame file");
    }
    let last = parts[parts.len() - 1];
    let ext = last.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !is_frame_extension(&ext) {
        return Err("not an image file extension");
    }
    Ok(())
}

/// A name a peer announced, made safe to show in logs, terminals and HTML: control characters, quotes and angle
/// brackets dropped, whitespace runs made one space, at most [`MAX_NAME`] bytes. `None` when nothing is left.
pub fn display_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_control() || c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else if !matches!(c, '<' | '>' | '"' | '\'' | '&' | '`' | '\\') {
            out.push(c);
        }
    }
    let mut out = out.trim().to_string();
    truncate_utf8(&mut out, MAX_NAME);
    (!out.is_empty()).then_some(out)
}

/// Frame file extensions an owner accepts from a volunteer: image formats Blender writes. Anything else is refused,
/// so a peer can never choose a path outside the job's folder.
pub const FRAME_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "exr", "tif", "tiff", "bmp", "tga", "webp", "jp2", "j2c", "hdr", "dpx", "cin", "rgb", "sgi",
];

pub fn is_frame_extension(ext: &str) -> bool {
    FRAME_EXTENSIONS.contains(&ext)
}

/// Cuts `text` to at most `max` bytes on a character boundary, for texts bound by a limit above.
pub fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}
