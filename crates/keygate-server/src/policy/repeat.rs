//! The last header value built for a key, per worker thread: values that repeat from one
//! message to the next (a limit's size, the reset second, a caller's address) are cloned, a
//! reference count, instead of formatted and allocated again.

use std::cell::RefCell;
use std::thread::LocalKey;

use http::HeaderValue;

/// One cached value; declare it in a `thread_local!`.
pub(crate) struct Repeat<K> {
    last: RefCell<Option<(K, HeaderValue)>>,
}

impl<K> Repeat<K> {
    pub(crate) const fn new() -> Self {
        Repeat {
            last: RefCell::new(None),
        }
    }
}

impl<K> Default for Repeat<K> {
    fn default() -> Self {
        Repeat::new()
    }
}

/// The value for `key` from this thread's `cache`, made by `make` when the key changed.
pub(crate) fn repeated<K: PartialEq + Copy + 'static>(
    cache: &'static LocalKey<Repeat<K>>,
    key: K,
    make: impl FnOnce(K) -> HeaderValue,
) -> HeaderValue {
    cache.with(|c| {
        let mut last = c.last.borrow_mut();
        match &*last {
            Some((k, v)) if *k == key => v.clone(),
            _ => {
                let v = make(key);
                *last = Some((key, v.clone()));
                v
            }
        }
    })
}
