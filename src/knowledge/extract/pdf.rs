//! PDF text through poppler's GLib interface (the engine `pdftotext` uses, and
//! already on the machine as libvips' PDF loader): one text per page, in reading
//! order. Encrypted and damaged files are refused with their own codes. Called only
//! inside the extraction child process (see `isolated`), so a crash in the C
//! library ends that process, not the server.

use std::ffi::{CStr, c_char, c_int, c_void};

use super::{ExtractError, Extracted, Limits};

#[repr(C)]
struct GError {
    domain: u32,
    code: c_int,
    message: *mut c_char,
}

#[link(name = "poppler-glib")]
unsafe extern "C" {
    fn poppler_document_new_from_bytes(
        bytes: *mut c_void,
        password: *const c_char,
        error: *mut *mut GError,
    ) -> *mut c_void;
    fn poppler_document_get_n_pages(doc: *mut c_void) -> c_int;
    fn poppler_document_get_page(doc: *mut c_void, index: c_int) -> *mut c_void;
    fn poppler_document_get_title(doc: *mut c_void) -> *mut c_char;
    fn poppler_page_get_text(page: *mut c_void) -> *mut c_char;
}

#[link(name = "gobject-2.0")]
unsafe extern "C" {
    fn g_object_unref(object: *mut c_void);
}

#[link(name = "glib-2.0")]
unsafe extern "C" {
    fn g_bytes_new(data: *const c_void, size: usize) -> *mut c_void;
    fn g_bytes_unref(bytes: *mut c_void);
    fn g_free(mem: *mut c_void);
    fn g_error_free(error: *mut GError);
}

/// poppler's error codes (`PopplerError`).
const POPPLER_ERROR_ENCRYPTED: c_int = 1;

/// Takes ownership of a GLib string.
fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: poppler returns a NUL-terminated UTF-8 string we own and free here.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { g_free(p.cast()) };
    Some(s)
}

/// Extracts every page's text.
pub fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut error: *mut GError = std::ptr::null_mut();
    // SAFETY: g_bytes_new copies `bytes`; the document holds its own reference.
    let doc = unsafe {
        let gbytes = g_bytes_new(bytes.as_ptr().cast(), bytes.len());
        let doc = poppler_document_new_from_bytes(gbytes, std::ptr::null(), &mut error);
        g_bytes_unref(gbytes);
        doc
    };
    if doc.is_null() {
        let (code, message) = if error.is_null() {
            (0, String::from("unknown error"))
        } else {
            // SAFETY: a non-null GError from poppler, freed once here.
            unsafe {
                let e = &*error;
                let m = if e.message.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(e.message).to_string_lossy().into_owned()
                };
                let c = e.code;
                g_error_free(error);
                (c, m)
            }
        };
        return Err(if code == POPPLER_ERROR_ENCRYPTED {
            ExtractError::new("encrypted_pdf", "the PDF is encrypted with a password; upload an unprotected copy")
        } else {
            ExtractError::new("malformed_pdf", format!("the PDF could not be read: {message}"))
        });
    }
    struct Doc(*mut c_void);
    impl Drop for Doc {
        fn drop(&mut self) {
            // SAFETY: the document reference we own.
            unsafe { g_object_unref(self.0) }
        }
    }
    let doc = Doc(doc);
    // SAFETY: a valid document for the calls below.
    let pages = unsafe { poppler_document_get_n_pages(doc.0) };
    if pages < 0 || pages as u32 > limits.max_pages {
        return Err(ExtractError::new(
            "too_many_pages",
            format!("the PDF has {pages} pages; at most {} are read", limits.max_pages),
        ));
    }
    let title = take_string(unsafe { poppler_document_get_title(doc.0) }).filter(|t| !t.trim().is_empty());
    let mut body = String::new();
    let mut chars = 0usize;
    let mut page_starts = Vec::with_capacity(pages as usize);
    for i in 0..pages {
        if i > 0 {
            body.push_str("\n\n");
            chars += 2;
        }
        page_starts.push(chars as i32);
        // SAFETY: index within 0..n_pages; the page is released after use.
        let text = unsafe {
            let page = poppler_document_get_page(doc.0, i);
            if page.is_null() {
                None
            } else {
                let t = take_string(poppler_page_get_text(page));
                g_object_unref(page);
                t
            }
        };
        let text = text.unwrap_or_default().replace('\u{0}', "").trim_end().to_string();
        chars += text.chars().count();
        body.push_str(&text);
        if body.len() as u64 > limits.max_text_bytes {
            return Err(ExtractError::new(
                "too_large",
                format!("the PDF's text is larger than {} bytes", limits.max_text_bytes),
            ));
        }
    }
    Ok(Extracted { title, body, page_starts })
}
