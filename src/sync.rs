//! Locks that outlive a panic. Every lock of the service guards data changed in single steps
//! (an insert, a swap of an `Arc`), so a panic in another holder cannot leave it half-done:
//! taking the data as it is beats failing every later caller, which would stop a stream over
//! one panicked task.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

pub fn into_inner<T>(mutex: Mutex<T>) -> T {
    mutex.into_inner().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_gives_its_data() {
        let mutex = Mutex::new(vec![1]);
        let rw = RwLock::new(1);
        std::thread::scope(|scope| {
            let poisoning = scope.spawn(|| {
                let _held = (mutex.lock(), rw.write());
                panic!("a holder panics");
            });
            assert!(poisoning.join().is_err());
        });
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        lock(&mutex).push(2);
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 2);
        assert_eq!(into_inner(mutex), [1, 2]);
    }
}
