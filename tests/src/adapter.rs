//! Which adapter binaries are under test, and where they are.

use std::path::PathBuf;

/// Generates each test once per adapter under test. **The list of adapters lives here**: adding
/// `smol`, `std` and `mio` to the bracket below is all it takes to run the whole suite against them.
///
/// ```no_run
/// use fedbroker_tests::*;
///
/// adapter_tests! {
///     /// Doc comments and attributes are kept.
///     fn healthz(a: Adapter) {
///         assert_eq!(Broker::start(a, &[]).get("/healthz").body, b"ok");
///     }
/// }
/// # fn main() {}
/// ```
/// expands to `mod adapters { mod tokio { #[test] fn healthz() { … } } … }`. The extra `adapters`
/// level keeps a module named `std` away from the caller's `use std::…` lines. Invoke it once per
/// module; the test functions see everything the invoking module imports.
#[macro_export]
macro_rules! adapter_tests {
    ($($tests:tt)*) => {
        mod adapters {
            $crate::__adapter_tests_for! { [tokio smol std mio] $($tests)* }
        }
    };
}

/// Recursion over the adapter list of [`adapter_tests!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_tests_for {
    ([] $($tests:tt)*) => {};
    ([$adapter:ident $($rest:ident)*] $($tests:tt)*) => {
        mod $adapter {
            #[allow(unused_imports)]
            use super::super::*;
            $crate::__adapter_tests_one! { $adapter $($tests)* }
        }
        $crate::__adapter_tests_for! { [$($rest)*] $($tests)* }
    };
}

/// The tests of one adapter module; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_tests_one {
    ($adapter:ident $( $(#[$meta:meta])* fn $name:ident($a:ident: Adapter) $body:block )*) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                let Some($a) = $crate::Adapter::select(stringify!($adapter)) else { return };
                $body
            }
        )*
    };
}

/// One adapter binary: `tokio` → `fedbroker-tokio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adapter {
    name: &'static str,
}

impl Adapter {
    /// The adapter named `name`, or `None` (with a note on stderr) when `FEDBROKER_ADAPTERS` is set
    /// and does not list it.
    pub fn select(name: &'static str) -> Option<Adapter> {
        if let Ok(list) = std::env::var("FEDBROKER_ADAPTERS") {
            if !list.split(',').any(|selected| selected.trim() == name) {
                eprintln!("adapter {name} deselected by FEDBROKER_ADAPTERS={list}");
                return None;
            }
        }
        Some(Adapter { name })
    }

    /// The adapter's name, as the `runtime` statistics key reports it.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Path of the binary; panics if it is missing (a missing binary is a failure, never a skip).
    pub fn binary(self) -> PathBuf {
        let file = format!("fedbroker-{}{}", self.name, std::env::consts::EXE_SUFFIX);
        let dir = match std::env::var_os("FEDBROKER_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            // The test executable is target/<profile>/deps/<test>-<hash>; binaries sit in target/<profile>.
            None => {
                let exe = std::env::current_exe().expect("current_exe");
                exe.parent()
                    .and_then(|deps| deps.parent())
                    .expect("test executable has no grandparent directory")
                    .to_path_buf()
            }
        };
        let path = dir.join(file);
        assert!(
            path.is_file(),
            "broker binary {} not found: run `cargo build --workspace --bins` first \
             (or set FEDBROKER_BIN_DIR to the directory holding it)",
            path.display()
        );
        path
    }
}
