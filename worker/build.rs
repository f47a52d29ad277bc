//! Makes test binaries of this crate find libtorch at run time (see toolchain-notes: torch-sys's rpath
//! never reaches dependants, and --as-needed would drop libtorch_cuda on GPU hosts).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
