//! Preemption points: places in an encoder's forward pass where the thread running a long pass
//! may run other, more urgent work first.
//!
//! A bulk batch of full size takes several milliseconds per layer on a CPU; a query that
//! arrives meanwhile should not wait for all of it. The model's worker installs a hook for the
//! length of a bulk pass ([`with_hook`]); every encoder calls [`between_layers`] before each
//! layer and [`within_layer`] after its attention half and between its feed-forward's two
//! projections (so a query waits for about a third of a layer), and the hook runs waiting
//! interactive batches to completion there, on the same thread, with the same weights. The bulk pass's state at a point is just its tensors in hand,
//! which nothing else touches, so its results are the same as without the detour.
//!
//! The hook is taken out of its slot while it runs: a pass started from the hook meets no hook
//! and runs straight through (no nesting beyond one level). Without a hook installed (CUDA,
//! calibration, interactive passes, priorities off) [`between_layers`] is one thread-local read.

use std::cell::Cell;
use std::ptr::NonNull;

type Hook = dyn FnMut() + 'static;

thread_local! {
    static HOOK: Cell<Option<NonNull<Hook>>> = const { Cell::new(None) };
}

/// Runs the installed hook, if any (encoders call this before each layer).
pub(crate) fn between_layers() {
    let Some(mut hook) = HOOK.with(Cell::take) else { return };
    // Put back when the hook returns or unwinds, so the rest of the pass keeps it.
    struct Restore(NonNull<Hook>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HOOK.with(|h| h.set(Some(self.0)));
        }
    }
    let _restore = Restore(hook);
    // SAFETY: only `with_hook` installs a pointer, from a `&mut` it holds for as long as the
    // pointer is installed (its guard takes it out before that borrow ends, also on unwind).
    // The pointer is taken out of the slot while the hook runs, so no second `&mut` to the same
    // closure can be made from here while this one lives.
    unsafe { hook.as_mut()() }
}

/// A point inside a layer (between its attention and feed-forward halves, and between the
/// feed-forward's two projections): the same as [`between_layers`], named for where it sits.
pub(crate) fn within_layer() {
    between_layers();
}

/// Runs `f` with `hook` installed for this thread's encoder layer boundaries.
pub(crate) fn with_hook<R>(hook: &mut dyn FnMut(), f: impl FnOnce() -> R) -> R {
    let short: NonNull<dyn FnMut() + '_> = NonNull::from(hook);
    // SAFETY: only the lifetime is erased (same fat-pointer layout); `Reset` removes the
    // pointer from the slot before `hook`'s borrow ends, on return and on unwind.
    let erased: NonNull<Hook> = unsafe { std::mem::transmute::<NonNull<dyn FnMut() + '_>, NonNull<Hook>>(short) };
    struct Reset(Option<NonNull<Hook>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            HOOK.with(|h| h.set(self.0));
        }
    }
    let _reset = Reset(HOOK.with(|h| h.replace(Some(erased))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_runs_at_each_boundary_only_while_installed_and_never_nested() {
        between_layers(); // nothing installed: nothing happens
        let mut calls = 0;
        let mut nested_saw_hook = false;
        let mut hook = || {
            calls += 1;
            // A pass started from the hook meets no hook.
            nested_saw_hook |= HOOK.with(|h| {
                let p = h.take();
                h.set(p);
                p.is_some()
            });
            between_layers();
        };
        with_hook(&mut hook, || {
            for _ in 0..6 {
                between_layers();
            }
        });
        between_layers(); // removed again
        assert_eq!(calls, 6);
        assert!(!nested_saw_hook);
        assert!(HOOK.with(|h| h.take()).is_none());
    }

    #[test]
    fn the_hook_is_removed_when_the_pass_unwinds() {
        let mut hook = || {};
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_hook(&mut hook, || {
                between_layers();
                panic!("a failed pass");
            })
        }));
        assert!(r.is_err());
        assert!(HOOK.with(|h| h.take()).is_none());
    }
}
