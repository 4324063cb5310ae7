//! Records the git commit loratune is built from, for run manifests; with the `cuda`
//! feature, also compiles the kernels in src/kernels/cuda/*.cu to PTX (nvcc, through cudaforge)
//! into $OUT_DIR/cuda_ptx.rs, one `pub const NAME: &str` per file, and the cuDNN attention
//! shim src/kernels/cudnn/sdpa.cpp against the headers named by `CUDNN_INCLUDE_DIR` and
//! `CUDNN_FRONTEND_INCLUDE_DIR` (scripts/build-cuda.sh fetches both from PyPI).
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
    {
        cuda::build_ptx();
        cuda::build_cudnn_shim();
    }
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

    /// The shim is plain C++ (no device code): it dlopens cuDNN at run time, so linking needs
    /// only the headers, and a binary without cuDNN on the machine still runs (flash kernels).
    pub fn build_cudnn_shim() {
        println!("cargo:rerun-if-changed=src/kernels/cudnn");
        let dir = |var: &str, header: &str| {
            println!("cargo:rerun-if-env-changed={var}");
            let d = std::env::var(var).unwrap_or_else(|_| {
                panic!("set {var} to the folder holding {header} (scripts/build-cuda.sh fetches it from PyPI)")
            });
            assert!(std::path::Path::new(&d).join(header).exists(), "{var}={d} holds no {header}");
            d
        };
        let cudnn = dir("CUDNN_INCLUDE_DIR", "cudnn.h");
        let frontend = dir("CUDNN_FRONTEND_INCLUDE_DIR", "cudnn_frontend.h");
        let cuda_root = std::env::var("CUDA_ROOT").expect("the cuda feature needs CUDA_ROOT (scripts/build-cuda.sh)");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .warnings(false) // the frontend's headers are not ours to tidy
            .include(format!("{cuda_root}/include"))
            .include(cudnn)
            .include(frontend)
            .file("src/kernels/cudnn/sdpa.cpp")
            .compile("loratune_cudnn_sdpa");
        println!("cargo:rustc-link-lib=dylib=stdc++");
        println!("cargo:rustc-link-lib=dylib=dl");
    }
}
