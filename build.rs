//! Records the git commit loratune is built from, for run manifests; with the `cuda`
//! feature, also compiles the kernels in src/kernels/cuda/*.cu to PTX (nvcc, through cudaforge)
//! into $OUT_DIR/cuda_ptx.rs, one `pub const NAME: &str` per file.
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    if let Some(c) = commit {
        println!("cargo:rustc-env=LORATUNE_GIT_COMMIT={c}{}", if dirty { "-dirty" } else { "" });
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    #[cfg(feature = "cuda")]
    cuda::build_ptx();
}

#[cfg(feature = "cuda")]
mod cuda {
    pub fn build_ptx() {
        println!("cargo:rerun-if-changed=src/kernels/cuda");
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let ptx = cudaforge::KernelBuilder::new()
            .source_dir("src/kernels/cuda")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .expect("nvcc failed on src/kernels/cuda (see the messages above)");
        ptx.write(out.join("cuda_ptx.rs")).expect("writing cuda_ptx.rs");
    }
}
