//! `[[statics]]`: files the proxy serves straight from an app's image
//! (`GET`/`HEAD` under `url_prefix`, from `guest_path` in the image), as
//! Fly's proxy does, without waking or loading a machine.
//!
//! A file is looked up through the image's layers, top layer first, with
//! the OCI whiteouts: `.wh.<name>` hides `<name>` of the layers below, and
//! a directory holding `.wh..wh..opq` hides what the layers below have in
//! it. Paths are taken apart component by component: `..`, `.` and
//! anything that is a symlink in a layer are refused, so nothing outside
//! the image's tree is ever read.

use std::path::{Path, PathBuf};

use super::*;

/// A `[[statics]]` entry of an app, with the image it serves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Static {
    /// The URL prefix it answers (`/static`).
    pub url_prefix: String,
    /// The directory in the image (`/app/public`).
    pub guest_path: String,
    /// Served for a directory (`index.html` when unset).
    pub index_document: Option<String>,
    /// The image's unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
}

/// Files larger than this are left to the machines.
const MAX_FILE: u64 = 64 << 20;

/// `%XX` decoded; `None` for a bad escape or a NUL.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// The components of a URL path below a prefix: `None` when it leaves its
/// root (`..`, `.`, backslashes).
fn components(rest: &str) -> Option<Vec<String>> {
    let decoded = percent_decode(rest)?;
    let mut v = Vec::new();
    for c in decoded.split('/') {
        match c {
            "" => continue,
            "." | ".." => return None,
            c if c.contains('\\') || c.starts_with(".wh.") => return None,
            c => v.push(c.to_owned()),
        }
    }
    Some(v)
}

/// What a path is in the image, through its layers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A regular file, in this layer's tree.
    File(PathBuf),
    /// A directory.
    Dir,
    /// Nothing (or something not served: a symlink, a device).
    None,
}

/// Looks `parts` up in `layers` (bottom first), with whiteouts.
pub(crate) fn lookup(layers: &[PathBuf], parts: &[String]) -> Found {
    'layers: for layer in layers.iter().rev() {
        let mut here = layer.clone();
        for (i, part) in parts.iter().enumerate() {
            // Hidden by this layer: a whiteout of the name, or of a
            // directory on the way.
            if here.join(format!(".wh.{part}")).exists() {
                return Found::None;
            }
            let next = here.join(part);
            match std::fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => return Found::None,
                Ok(m) if m.is_dir() => {
                    if i + 1 == parts.len() {
                        return Found::Dir;
                    }
                    here = next;
                }
                Ok(m) if m.is_file() => {
                    return if i + 1 == parts.len() {
                        Found::File(next)
                    } else {
                        Found::None
                    };
                }
                Ok(_) => return Found::None,
                Err(_) => {
                    // Not in this layer; an opaque directory on the way
                    // hides the layers below.
                    if here != *layer && here.join(".wh..wh..opq").exists() {
                        return Found::None;
                    }
                    continue 'layers;
                }
            }
        }
        if parts.is_empty() {
            return Found::Dir;
        }
    }
    Found::None
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The file `path` (under one of `statics`' prefixes) names, if the image
/// has it.
pub(crate) fn resolve(statics: &[Static], path: &str) -> Option<PathBuf> {
    for s in statics {
        let prefix = s.url_prefix.trim_end_matches('/');
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let mut parts = components(rest)?;
        let base = components(&s.guest_path)?;
        let mut full = base;
        full.append(&mut parts);
        match lookup(&s.layers, &full) {
            Found::File(p) => return Some(p),
            Found::Dir => {
                full.push(
                    s.index_document
                        .clone()
                        .unwrap_or_else(|| "index.html".into()),
                );
                if let Found::File(p) = lookup(&s.layers, &full) {
                    return Some(p);
                }
            }
            Found::None => {}
        }
    }
    None
}

impl Proxy {
    /// Serves a `GET`/`HEAD` from the app's statics, if one matches.
    pub(crate) async fn serve_static(
        &self,
        app: &str,
        req: &Request<Incoming>,
    ) -> Option<Response<Body>> {
        let statics = self.machines.statics(app).await;
        let file = resolve(&statics, req.uri().path())?;
        let meta = tokio::fs::metadata(&file).await.ok()?;
        if meta.len() > MAX_FILE {
            return None;
        }
        let body = if req.method() == http::Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(tokio::fs::read(&file).await.ok()?)
        };
        let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&file)),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        for (p, content) in files {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if content.is_empty() && p.ends_with('/') {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::write(&path, content).unwrap();
            }
        }
        dir.to_owned()
    }

    #[test]
    fn files_come_through_the_layers_with_whiteouts_and_never_from_outside() {
        let t = tempfile::tempdir().unwrap();
        let bottom = layer(
            &t.path().join("l0"),
            &[
                ("app/public/a.txt", "old a"),
                ("app/public/gone.txt", "gone"),
                ("app/public/docs/index.html", "docs"),
                ("app/public/hidden/x.txt", "x"),
                ("etc/passwd", "root"),
            ],
        );
        let top = layer(
            &t.path().join("l1"),
            &[
                ("app/public/a.txt", "new a"),
                ("app/public/.wh.gone.txt", ""),
                ("app/public/hidden/.wh..wh..opq", ""),
                ("app/public/hidden/y.txt", "y"),
            ],
        );
        std::os::unix::fs::symlink("/etc/hostname", top.join("app/public/link")).unwrap();
        let s = vec![Static {
            url_prefix: "/static/".into(),
            guest_path: "/app/public".into(),
            index_document: None,
            layers: vec![bottom, top],
        }];
        let read = |p: &str| resolve(&s, p).map(|f| std::fs::read_to_string(f).unwrap());
        assert_eq!(read("/static/a.txt").as_deref(), Some("new a"));
        assert_eq!(read("/static/gone.txt"), None, "whited out");
        assert_eq!(read("/static/docs").as_deref(), Some("docs"), "index.html");
        assert_eq!(read("/static/docs/").as_deref(), Some("docs"));
        assert_eq!(read("/static/hidden/y.txt").as_deref(), Some("y"));
        assert_eq!(read("/static/hidden/x.txt"), None, "opaque directory");
        assert_eq!(read("/static/link"), None, "symlinks are not followed");
        assert_eq!(read("/static/../../etc/passwd"), None);
        assert_eq!(read("/static/%2e%2e/%2e%2e/etc/passwd"), None);
        assert_eq!(read("/static/..%2f..%2fetc/passwd"), None);
        assert_eq!(read("/statics/a.txt"), None, "a prefix is a whole segment");
        assert_eq!(read("/other/a.txt"), None);
        assert_eq!(read("/static/a.txt%00"), None);
    }
}
