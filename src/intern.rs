//! Compiled forms shared by what they were compiled from. Rules files repeat patterns and
//! template texts (the same keyword regex, campaign glob or message in many rules), and a
//! reload compiles mostly what the serving configuration already holds: both share one
//! compiled form instead of building another. The table holds weak references: a form no
//! configuration uses any more is dropped with the last of them, and its entry (the key and
//! a small allocation) is swept as the table grows.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A table of compiled forms by key.
pub struct Interner<K, V> {
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    table: Option<HashMap<K, Weak<V>>>,
    /// The table's size at which entries of dropped forms are next swept.
    sweep_at: usize,
}

impl<K: Hash + Eq, V> Interner<K, V> {
    /// An empty table (usable in a `static`).
    pub const fn new() -> Self {
        Interner {
            inner: Mutex::new(Inner {
                table: None,
                sweep_at: 64,
            }),
        }
    }

    /// The form compiled for `key` if one is still in use, else `compile`'s, kept for the next
    /// caller. Errors are not kept: a bad source is compiled again to be reported again.
    pub fn get_or_compile<E>(
        &self,
        key: K,
        compile: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        if let Some(found) = self.find(&key) {
            return Ok(found);
        }
        // Compiled unlocked: another reload's compiling need not wait for this one.
        let compiled = Arc::new(compile()?);
        let mut inner = self.lock();
        let sweep_at = inner.sweep_at;
        let table = inner.table.get_or_insert_with(HashMap::new);
        if let Some(raced) = table.get(&key).and_then(Weak::upgrade) {
            return Ok(raced);
        }
        table.insert(key, Arc::downgrade(&compiled));
        if table.len() >= sweep_at {
            table.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (2 * table.len()).max(64);
        }
        Ok(compiled)
    }

    fn find(&self, key: &K) -> Option<Arc<V>> {
        self.lock()
            .table
            .as_ref()
            .and_then(|t| t.get(key))
            .and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // Only weak references and a size: a table left by a panicking thread is still sound.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq, V> Default for Interner<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Interner;
    use std::sync::Arc;

    #[test]
    fn a_form_in_use_is_shared_and_one_dropped_is_compiled_again_and_swept() {
        let table: Interner<String, String> = Interner::new();
        let mut compiled = 0;
        let get = |key: &str, compiled: &mut usize| {
            table
                .get_or_compile(key.to_string(), || {
                    *compiled += 1;
                    Ok::<_, ()>(key.to_uppercase())
                })
                .unwrap()
        };
        let a = get("a", &mut compiled);
        let again = get("a", &mut compiled);
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!((compiled, a.as_str()), (1, "A"));
        drop((a, again));
        assert_eq!(*get("a", &mut compiled), "A");
        assert_eq!(compiled, 2);
        // Forms dropped do not pile up: the table is swept as it grows.
        for i in 0..1000 {
            get(&format!("k{i}"), &mut compiled);
        }
        let size = table.lock().table.as_ref().map_or(0, |t| t.len());
        assert!(size < 128, "{size} entries left");
        let failed = table.get_or_compile("bad".to_string(), || Err::<String, _>("no"));
        assert_eq!(failed.unwrap_err(), "no");
    }
}
