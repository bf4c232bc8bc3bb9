use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use super::*;
use crate::codec::FORMAT_VERSION;
use crate::test_support::{id, state, temp_store};

/// Runs a future to completion on this thread (the crate has no runtime).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn store_is_clone_send_sync_and_flush_async_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Store>();
    let (_dir, store) = temp_store();
    let fut = store.flush_async();
    assert_send(&fut);
    block_on(fut).unwrap();
}

#[test]
fn open_creates_the_dir_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.dir(), path);
    store.put_der_states(&[(id("d1"), state(1))]).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_der_states().unwrap()[&id("d1")], state(1));
    assert!(store.size_on_disk().unwrap() > 0);
}

#[test]
fn second_open_in_the_same_process_is_locked() {
    // sled locks the data file with flock(2), which conflicts between two
    // opens even within one process.
    let (dir, store) = temp_store();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {} is in use by another vpp process (stop it, or talk to it with --node URL)",
            dir.path().display()
        )
    );
    // The clone keeps it open; only dropping every handle releases it.
    let clone = store.clone();
    drop(store);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(clone);
    Store::open(dir.path()).unwrap();
}

#[test]
fn other_schema_version_is_refused() {
    let (dir, store) = temp_store();
    let mut v2 = vec![FORMAT_VERSION];
    v2.extend(postcard::to_stdvec(&(SCHEMA_VERSION + 1)).unwrap());
    store
        .inner
        .meta
        .insert(crate::keys::SCHEMA_VERSION_KEY, v2)
        .unwrap();
    drop(store);
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaMismatch { found, expected } if found == SCHEMA_VERSION + 1 && expected == SCHEMA_VERSION),
        "{err:?}"
    );
}

#[test]
fn garbage_schema_version_is_corrupt() {
    let (dir, store) = temp_store();
    store
        .inner
        .meta
        .insert(crate::keys::SCHEMA_VERSION_KEY, &b"\xff\xff"[..])
        .unwrap();
    drop(store);
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { tree: META, ref key, .. } if key == "schema_version"),
        "{err:?}"
    );
}

#[test]
fn options_default_to_the_documented_values() {
    let o = StoreOptions::default();
    assert_eq!(o.cache_bytes, 256 << 20);
    assert_eq!(o.flush_every_ms, Some(500));
}
