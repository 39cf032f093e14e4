//! Per-thread spare byte buffers for the JPEG decoders' planes and pixels. A
//! render allocates about a megabyte of them and frees it again a few
//! milliseconds later; taken from the allocator each time (mimalloc returns freed
//! pages at once) they cost page faults and zeroing on every image. Each imaging
//! worker keeps at most [`KEEP_BYTES`] of them; larger buffers go back to the
//! allocator.

use std::cell::RefCell;

/// The most bytes of spare buffers one thread keeps.
const KEEP_BYTES: usize = 2 << 20;

/// The most spare buffers one thread keeps.
const KEEP_COUNT: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` zero bytes, made from this thread's smallest spare buffer
/// that holds `len` (else a new one).
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut v = empty(len);
    v.resize(len, 0);
    v
}

/// An empty buffer with room for at least `capacity` bytes, from this thread's
/// spares when one is large enough.
pub fn empty(capacity: usize) -> Vec<u8> {
    let spare = SPARE.with_borrow_mut(|spares| {
        let fit = spares
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        Some(spares.swap_remove(fit))
    });
    match spare {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Hands back a buffer that is owned (a borrowed one belongs to someone else).
pub fn give_back_cow(c: std::borrow::Cow<'_, [u8]>) {
    if let std::borrow::Cow::Owned(v) = c {
        give_back(v);
    }
}

/// Hands a buffer back to this thread's spares (or to the allocator, when it
/// would take the spares over [`KEEP_BYTES`]).
pub fn give_back(v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > KEEP_BYTES {
        return;
    }
    SPARE.with_borrow_mut(|spares| {
        let kept: usize = spares.iter().map(Vec::capacity).sum();
        if spares.len() < KEEP_COUNT && kept + v.capacity() <= KEEP_BYTES {
            spares.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_zeroed_and_bounded() {
        let mut a = zeroed(1000);
        assert_eq!(a.len(), 1000);
        a.iter_mut().for_each(|b| *b = 7);
        let ptr = a.as_ptr();
        give_back(a);
        // The spare comes back, emptied, then zeroed: no old bytes leak through.
        let b = zeroed(500);
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.len(), 500);
        give_back(b);
        // Too small a spare is not used; a new buffer is made.
        let c = empty(4000);
        assert_ne!(c.as_ptr(), ptr);
        assert!(c.capacity() >= 4000 && c.is_empty());
        // A buffer over the limit is not kept.
        give_back(Vec::with_capacity(KEEP_BYTES + 1));
        SPARE.with_borrow(|s| assert!(s.iter().map(Vec::capacity).sum::<usize>() <= KEEP_BYTES));
    }
}
