//! Whether the NCCL backend can run on this machine.
//!
//! cudarc loads the CUDA driver and NCCL at run time (`dynamic-loading`), so the crate builds and
//! links on machines without CUDA; the price is that cudarc *panics* on first use of a missing
//! library. [`available`] therefore checks both libraries before any call that could load them,
//! and [`guarded`] turns any remaining panic of cudarc's initialisation into an error.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cudarc::driver::CudaContext;

use crate::error::{OpsError, Result};

/// What to do about a missing CUDA driver.
pub(crate) const DRIVER_HINT: &str =
    "the NCCL backend needs an NVIDIA GPU and its driver (libcuda.so); use the TCP ring backend on machines without one";

/// What to do about a missing NCCL: cudarc never looks for `libnccl.so.2`, the only name the pip
/// wheel ships.
pub(crate) const NCCL_HINT: &str = "cudarc loads `libnccl.so` (or `libnccl.so.<cuda major>`), never `libnccl.so.2`, the only name \
     the nvidia-nccl pip wheel ships (site-packages/nvidia/nccl/lib/): put a `libnccl.so -> libnccl.so.2` symlink in a \
     directory on LD_LIBRARY_PATH (scripts/setup.sh makes one in .lib/)";

/// Which prerequisites were found; [`diagnose`] turns it into the user-facing verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The CUDA driver library could be loaded.
    pub driver: bool,
    /// The NCCL library could be loaded.
    pub nccl: bool,
    /// Devices the driver reports, or why it could not count them (only probed with a driver).
    pub devices: std::result::Result<usize, String>,
}

/// Checks that the CUDA driver, NCCL and at least one device are present, without panicking.
pub fn available() -> Result<()> {
    diagnose(&probe())
}

/// Looks for the libraries, then (only if the driver is there) counts devices.
fn probe() -> Probe {
    let driver = driver_present();
    let nccl = nccl_present();
    let devices = if driver {
        match guarded("counting CUDA devices", CudaContext::device_count) {
            Ok(Ok(n)) => Ok(usize::try_from(n).unwrap_or(0)),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Ok(0)
    };
    Probe { driver, nccl, devices }
}

/// The verdict for a probe: the driver is reported first because nothing works without it.
pub(crate) fn diagnose(p: &Probe) -> Result<()> {
    let unavailable = |what: String, hint: &str| Err(OpsError::Unavailable { what, hint: hint.to_string() });
    if !p.driver {
        return unavailable("no CUDA driver library (libcuda.so) could be loaded".into(), DRIVER_HINT);
    }
    if !p.nccl {
        return unavailable("no NCCL library (libnccl.so) could be loaded".into(), NCCL_HINT);
    }
    match &p.devices {
        Ok(0) => unavailable("the CUDA driver reports no device".into(), DRIVER_HINT),
        Ok(_) => Ok(()),
        Err(e) => unavailable(format!("the CUDA driver failed to initialise: {e}"), DRIVER_HINT),
    }
}

/// Runs cudarc code that may panic (a missing library or symbol) and reports the panic as
/// [`OpsError::Unavailable`] instead of unwinding into the caller.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg =
            panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("(no message)");
        OpsError::Unavailable { what: format!("{what} failed inside cudarc: {msg}"), hint: NCCL_HINT.to_string() }
    })
}

/// Whether `dlopen` finds the CUDA driver under any name cudarc tries.
#[allow(unsafe_code)]
fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only `dlopen`s the candidate names and closes what it opened;
    // running the driver's library initialisers is what any later use does anyway.
    guarded("loading the CUDA driver", || unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether `dlopen` finds NCCL under any name cudarc tries.
#[allow(unsafe_code)]
fn nccl_present() -> bool {
    // SAFETY: as in `driver_present`: a `dlopen`/`dlclose` of the candidate names only.
    guarded("loading NCCL", || unsafe { cudarc::nccl::sys::is_culib_present() }).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(driver: bool, nccl: bool, devices: std::result::Result<usize, String>) -> String {
        match diagnose(&Probe { driver, nccl, devices }) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_missing_piece_is_named_with_a_hint() {
        let no_driver = verdict(false, true, Ok(0));
        assert!(no_driver.starts_with("NCCL backend unavailable: no CUDA driver library (libcuda.so)"), "{no_driver}");
        assert!(no_driver.contains("TCP ring"), "{no_driver}");
        // The driver is reported first: NCCL alone cannot help.
        assert_eq!(verdict(false, false, Ok(0)), no_driver);
        let no_nccl = verdict(true, false, Ok(1));
        assert!(no_nccl.contains("no NCCL library (libnccl.so)"), "{no_nccl}");
        assert!(no_nccl.contains("libnccl.so.2") && no_nccl.contains("LD_LIBRARY_PATH") && no_nccl.contains("scripts/setup.sh"));
        assert!(verdict(true, true, Ok(0)).contains("reports no device"));
        assert!(verdict(true, true, Err("CUDA_ERROR_NO_DEVICE".into())).contains("CUDA_ERROR_NO_DEVICE"));
        assert_eq!(verdict(true, true, Ok(2)), "ok");
    }

    #[test]
    fn panics_become_unavailable_errors() {
        let e = guarded("probing", || -> u32 { panic!("Missing symbol ncclFoo") }).unwrap_err();
        assert!(matches!(e, OpsError::Unavailable { .. }));
        assert!(e.to_string().contains("probing failed inside cudarc: Missing symbol ncclFoo"), "{e}");
        assert_eq!(guarded("fine", || 7).unwrap(), 7);
    }
}
