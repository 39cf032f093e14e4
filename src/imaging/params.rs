//! Transformation parameters: parsing Supabase's query (or a signed token's
//! `transformations` string), validating every value with a stable error, and the
//! normalised form that keys the variant cache and fills `X-Transformations`.

use super::ImageError;

/// Largest output side, and the bound of `width`/`height`.
pub const MAX_SIDE: u32 = 2500;

/// How the picture is fitted to `width` × `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Fill the box, keeping the aspect ratio, cropping what projects (default).
    Cover,
    /// Fit inside the box, keeping the aspect ratio.
    Contain,
    /// Stretch to the box exactly.
    Fill,
}

/// Where a cover crop is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gravity {
    /// Attention-based smart crop (`auto`, also imgproxy's `sm`).
    Auto,
    /// The centre (`ce`, default).
    Centre,
    /// A compass point: horizontal −1/0/1 (west, centre, east), vertical −1/0/1 (north, centre, south).
    Compass(i8, i8),
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// WebP.
    Webp,
    /// AVIF (AV1 in HEIF).
    Avif,
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// GIF.
    Gif,
}

impl Format {
    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Webp => "image/webp",
            Format::Avif => "image/avif",
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
        }
    }
    /// The short name used in parameters.
    pub fn name(self) -> &'static str {
        match self {
            Format::Webp => "webp",
            Format::Avif => "avif",
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Gif => "gif",
        }
    }
}

/// The format asked for: a concrete one, the source's, or unset (WebP when the
/// client accepts it, else the source's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// `format` absent: decided by `Accept`.
    Auto,
    /// `format=origin`.
    Origin,
    /// A named format.
    Named(Format),
}

/// A validated transformation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// Target width, if given.
    pub width: Option<u32>,
    /// Target height, if given.
    pub height: Option<u32>,
    /// Fitting mode.
    pub resize: Resize,
    /// Encoder quality, 20–100.
    pub quality: u8,
    /// The format asked for.
    pub format: Wanted,
    /// Crop anchor.
    pub gravity: Gravity,
    /// PDF page, 1-based.
    pub page: u32,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            width: None,
            height: None,
            resize: Resize::Cover,
            quality: 80,
            format: Wanted::Auto,
            gravity: Gravity::Centre,
            page: 1,
        }
    }
}

/// The parameter names a transformation uses (a public object URL with any of
/// them is rendered instead of served as it is).
pub const NAMES: [&str; 7] = ["width", "height", "resize", "quality", "format", "gravity", "page"];

fn invalid(message: String) -> ImageError {
    ImageError::new(400, "InvalidRequest", message)
}

/// A whole number of `name` within `lo..=hi`.
fn number(name: &str, v: &str, lo: u32, hi: u32) -> Result<u32, ImageError> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| invalid(format!("{name} must be a whole number between {lo} and {hi}")))
}

fn side(name: &str, v: &str) -> Result<Option<u32>, ImageError> {
    // storage-js sends 0 for "unset" in some versions; Supabase treats it as absent.
    if v == "0" {
        return Ok(None);
    }
    number(name, v, 1, MAX_SIDE).map(Some)
}

impl Transform {
    /// Parses `(name, value)` pairs; unknown names are ignored (e.g. `token`,
    /// `download`, `cacheNonce`), known ones must be valid.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Transform, ImageError> {
        let mut t = Transform::default();
        for (k, v) in pairs {
            let v = v.trim();
            match k {
                "width" => t.width = side("width", v)?,
                "height" => t.height = side("height", v)?,
                "resize" | "resizing_type" => {
                    t.resize = match v {
                        "cover" | "fill-crop" => Resize::Cover,
                        "contain" | "fit" => Resize::Contain,
                        "fill" | "force" => Resize::Fill,
                        _ => return Err(invalid("resize must be cover, contain or fill".into())),
                    }
                }
                "quality" => t.quality = number("quality", v, 20, 100)? as u8,
                "format" => {
                    t.format = match v.to_ascii_lowercase().as_str() {
                        "origin" => Wanted::Origin,
                        "webp" => Wanted::Named(Format::Webp),
                        "avif" => Wanted::Named(Format::Avif),
                        "jpeg" | "jpg" => Wanted::Named(Format::Jpeg),
                        "png" => Wanted::Named(Format::Png),
                        _ => return Err(invalid("format must be origin, webp, avif, jpeg or png".into())),
                    }
                }
                "gravity" => {
                    t.gravity = match v.to_ascii_lowercase().as_str() {
                        "auto" | "sm" | "smart" => Gravity::Auto,
                        "ce" | "center" | "centre" => Gravity::Centre,
                        "no" | "north" => Gravity::Compass(0, -1),
                        "so" | "south" => Gravity::Compass(0, 1),
                        "ea" | "east" => Gravity::Compass(1, 0),
                        "we" | "west" => Gravity::Compass(-1, 0),
                        "noea" | "northeast" => Gravity::Compass(1, -1),
                        "nowe" | "northwest" => Gravity::Compass(-1, -1),
                        "soea" | "southeast" => Gravity::Compass(1, 1),
                        "sowe" | "southwest" => Gravity::Compass(-1, 1),
                        _ => {
                            return Err(invalid(
                                "gravity must be auto, ce, no, so, ea, we, noea, nowe, soea or sowe".into(),
                            ));
                        }
                    }
                }
                "page" => t.page = number("page", v, 1, 100_000)?,
                _ => {}
            }
        }
        Ok(t)
    }

    /// Parses a signed token's `transformations` string (`height:200,width:200,…`).
    pub fn parse_signed(s: &str) -> Result<Transform, ImageError> {
        Transform::parse(s.split(',').filter(|p| !p.is_empty()).filter_map(|p| p.split_once(':')))
    }

    /// The output format for an `Accept` header: a named one, or `None` for the
    /// source's own (`format=origin`, or no format and a client without WebP).
    pub fn resolve(&self, accept: Option<&str>) -> Option<Format> {
        match self.format {
            Wanted::Named(f) => Some(f),
            Wanted::Origin => None,
            Wanted::Auto => {
                let webp = accept.is_some_and(|a| {
                    a.split(',').any(|m| {
                        let mut it = m.split(';');
                        let mime = it.next().unwrap_or("").trim();
                        let refused = it.any(|p| p.trim().replace(' ', "") == "q=0");
                        mime.eq_ignore_ascii_case("image/webp") && !refused
                    })
                });
                webp.then_some(Format::Webp)
            }
        }
    }

    /// The normalised form for a resolved output format (`None`: the source's):
    /// every field, fixed order. Keys the variant cache; sent as `X-Transformations`.
    pub fn normalised(&self, out: Option<Format>) -> String {
        let mut parts = Vec::with_capacity(7);
        if let Some(h) = self.height {
            parts.push(format!("height:{h}"));
        }
        if let Some(w) = self.width {
            parts.push(format!("width:{w}"));
        }
        let resize = match self.resize {
            Resize::Cover => "fill",
            Resize::Contain => "fit",
            Resize::Fill => "force",
        };
        parts.push(format!("resizing_type:{resize}"));
        parts.push(format!("quality:{}", self.quality));
        parts.push(format!("format:{}", out.map_or("origin", Format::name)));
        let gravity = match self.gravity {
            Gravity::Auto => "sm".to_string(),
            Gravity::Centre => "ce".to_string(),
            Gravity::Compass(x, y) => {
                let v = match y {
                    -1 => "no",
                    1 => "so",
                    _ => "",
                };
                let h = match x {
                    -1 => "we",
                    1 => "ea",
                    _ => "",
                };
                format!("{v}{h}")
            }
        };
        parts.push(format!("gravity:{gravity}"));
        if self.page != 1 {
            parts.push(format!("page:{}", self.page));
        }
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let t = Transform::parse([("width", "150"), ("height", "150"), ("resize", "cover"), ("gravity", "auto")])
            .expect("valid");
        assert_eq!(t.width, Some(150));
        assert_eq!(t.resolve(Some("image/avif,image/webp,*/*")), Some(Format::Webp));
        assert_eq!(t.resolve(Some("image/png")), None);
        assert_eq!(t.resolve(Some("image/webp;q=0")), None);
        assert_eq!(t.resolve(None), None);
        assert_eq!(
            t.normalised(Some(Format::Webp)),
            "height:150,width:150,resizing_type:fill,quality:80,format:webp,gravity:sm"
        );
        let signed = Transform::parse_signed("height:150,resize:cover,width:150,gravity:auto").expect("signed");
        assert_eq!(signed, t);
        let sw = Transform::parse([("gravity", "sowe")]).expect("compass");
        assert!(sw.normalised(None).ends_with("format:origin,gravity:sowe"));
    }

    #[test]
    fn refuses_bad_values() {
        for (k, v) in [
            ("width", "2501"),
            ("width", "-1"),
            ("height", "abc"),
            ("resize", "crop"),
            ("quality", "19"),
            ("quality", "101"),
            ("format", "bmp"),
            ("gravity", "up"),
            ("page", "0"),
        ] {
            let e = Transform::parse([(k, v)]).expect_err(k);
            assert_eq!((e.status, e.code), (400, "InvalidRequest"), "{k}={v}");
        }
    }
}
