//! Packages (pure): a delta of a class manifest, rendered for one edge (or
//! for the whole class when nothing in it depends on the edge), as a
//! deterministic tar.gz — same inputs, same bytes.
//!
//! Layout (a compatible superset of the original's):
//!
//! ```text
//! manifest.json          what is inside: packages in execution order, files with
//!                        path/owner/group/permissions/sha256, from/to set versions
//! manifest.sha256        sha256sum lines for every other file
//! install.sh             the generated installer (see INSTALL_SH)
//! package_sequence.txt   the package directories in execution order
//! template_path.txt      every target path, for the backup
//! pre_gen_script.sh      the class's scripts, when it has them
//! post_gen_script.sh
//! <seq>_<name>/          one directory per master package:
//!     <file name>        its rendered templates (file name = basename of the path)
//!     prescript.sh       its pre-script + the generated install lines
//!     postscript.sh      its post-script
//!     uninstall.sh       (only this, for a deleted package)
//! ```
//!
//! Entries: `manifest.json`, `manifest.sha256`, then everything else sorted
//! by path; uid/gid 0 (`root`), mtime = the newest set-log entry's time,
//! scripts and directories 0755, files 0644 (the install sets the target
//! modes); gzip without a timestamp or file name.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::{Value, json};

use super::delta::{Selected, Since};
use super::manifest::{ClassManifest, MasterEntry, TemplateEntry};
use super::model::{
    self, ACTIVE, EdgeRecord, FileRef, POST_GEN_SCRIPT, POST_SCRIPT, PRE_GEN_SCRIPT, PRE_SCRIPT,
    Render, UNINSTALL_SCRIPT, render_set_version, sha256_hex,
};
use super::render::{self, Kind};

/// Written into every manifest; part of a package's identity.
pub const GENERATOR: &str = concat!("caldera ", env!("CARGO_PKG_VERSION"));
/// The manifest's format version.
pub const FORMAT: u64 = 1;

const SCRIPT_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// The generated installer.
pub const INSTALL_SH: &str = include_str!("install.sh");

/// Why no package could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Something in the package depends on the edge (a class-wide build
    /// was asked for).
    #[error("{0} depends on the edge")]
    NeedsEdge(String),
    /// The bytes of an attachment are not loaded (yet).
    #[error("the file {name:?} of {doc} is not loaded yet")]
    MissingFile { doc: String, name: String },
    #[error(
        "template {template_id} ({name}, version {version_no}) cannot be rendered{edge}: {reason}"
    )]
    Render {
        template_id: u64,
        name: String,
        version_no: String,
        edge: String,
        reason: String,
    },
    /// The configuration cannot make a valid package (a path missing, two
    /// files with one name, a file whose bytes do not match their sha256).
    #[error("{0}")]
    Invalid(String),
}

/// Where the bytes of attachments come from.
pub type Files<'a> = dyn Fn(&FileRef) -> Option<Vec<u8>> + 'a;

/// What to build.
pub struct Request<'a> {
    pub manifest: &'a ClassManifest,
    pub selected: &'a [Selected<'a>],
    pub since: Since,
    /// `None`: a class-wide package (fails with `NeedsEdge` when any part
    /// depends on the edge).
    pub edge: Option<&'a EdgeRecord>,
}

/// A built package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

struct Entry {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// Builds the tar.gz of a delta.
///
/// # Errors
/// See `PackageError`; a render error names the template, version and edge.
pub fn build(request: &Request<'_>, files: &Files<'_>) -> Result<Package, PackageError> {
    let hb = render::registry();
    let context = request
        .edge
        .map(|edge| render::context(&request.manifest.vars, edge));
    let mut builder = Layout::default();
    for selected in request.selected {
        builder.master(request, selected, files, &hb, context.as_ref())?;
    }
    for (name, script) in [
        (PRE_GEN_SCRIPT, &request.manifest.pre_gen),
        (POST_GEN_SCRIPT, &request.manifest.post_gen),
    ] {
        if let Some(file) = script {
            builder.push(name.to_string(), SCRIPT_MODE, fetch(file, files)?);
        }
    }
    builder.push(
        "install.sh".into(),
        SCRIPT_MODE,
        INSTALL_SH.as_bytes().to_vec(),
    );
    builder.push(
        "package_sequence.txt".into(),
        FILE_MODE,
        lines(&builder.dirs),
    );
    builder.push(
        "template_path.txt".into(),
        FILE_MODE,
        lines(&builder.targets),
    );
    let manifest = manifest_json(request, &builder.packages);
    let entries = builder.finish(manifest);
    let bytes = tar_gz(&entries, request.manifest.latest_set_time)
        .map_err(|err| PackageError::Invalid(format!("cannot write the archive: {err}")))?;
    let sha256 = sha256_hex(&bytes);
    Ok(Package { bytes, sha256 })
}

fn lines(items: &[String]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

fn fetch(file: &FileRef, files: &Files<'_>) -> Result<Vec<u8>, PackageError> {
    files(file).ok_or_else(|| PackageError::MissingFile {
        doc: file.doc.clone(),
        name: file.name.clone(),
    })
}

/// The package's entries as they are collected.
#[derive(Default)]
struct Layout {
    entries: Vec<Entry>,
    dirs: Vec<String>,
    targets: Vec<String>,
    /// One manifest entry per master package.
    packages: Vec<Value>,
}

impl Layout {
    fn push(&mut self, path: String, mode: u32, data: Vec<u8>) {
        self.entries.push(Entry { path, mode, data });
    }

    fn master(
        &mut self,
        request: &Request<'_>,
        selected: &Selected<'_>,
        files: &Files<'_>,
        hb: &handlebars::Handlebars<'_>,
        context: Option<&Value>,
    ) -> Result<(), PackageError> {
        let master = selected.master;
        if self.dirs.contains(&master.dir) {
            return Err(PackageError::Invalid(format!(
                "two master packages use the directory {:?}",
                master.dir
            )));
        }
        self.dirs.push(master.dir.clone());
        let mut listed = Vec::new();
        let mut scripts = Vec::new();
        if master.status != ACTIVE {
            let script = match &master.uninstall {
                Some(file) => fetch(file, files)?,
                None => b"# this master package has no uninstall script\n".to_vec(),
            };
            scripts.push(self.script(&master.dir, UNINSTALL_SCRIPT, script));
        } else {
            let mut install = Vec::new();
            let mut names = BTreeSet::new();
            for template in &selected.templates {
                let file = self.template(request, master, template, files, hb, context)?;
                if !names.insert(file.name.clone()) {
                    return Err(PackageError::Invalid(format!(
                        "master package {} has two files named {:?}",
                        master.master_id, file.name
                    )));
                }
                install.push(install_line(&file));
                listed.push(file.json);
            }
            let pre = optional(&master.pre_script, files)?;
            scripts.push(self.script(&master.dir, PRE_SCRIPT, prescript(&pre, &install)));
            let post = optional(&master.post_script, files)?;
            scripts.push(self.script(&master.dir, POST_SCRIPT, post));
        }
        self.packages.push(json!({
            "master_package_id": master.master_id,
            "name": master.name,
            "status": master.status,
            "execution_sequence": master.execution_sequence,
            "dir": master.dir,
            "scripts": scripts,
            "files": listed,
        }));
        Ok(())
    }

    fn script(&mut self, dir: &str, name: &str, data: Vec<u8>) -> Value {
        let listed = json!({ "name": name, "sha256": sha256_hex(&data), "size": data.len() });
        self.push(format!("{dir}/{name}"), SCRIPT_MODE, data);
        listed
    }

    fn template(
        &mut self,
        request: &Request<'_>,
        master: &MasterEntry,
        template: &TemplateEntry,
        files: &Files<'_>,
        hb: &handlebars::Handlebars<'_>,
        context: Option<&Value>,
    ) -> Result<InstalledFile, PackageError> {
        let what = || {
            format!(
                "template {} ({}) of master package {}",
                template.template_id, template.name, master.master_id
            )
        };
        let Some(path) = &template.path else {
            return Err(PackageError::Invalid(format!(
                "{} has no path and its master package has no default path",
                what()
            )));
        };
        let target = match (request.edge, model::has_edge_id_placeholder(path)) {
            (Some(edge), _) => model::substitute_edge_id(path, &edge.edge_id),
            (None, true) => return Err(PackageError::NeedsEdge(format!("the path of {}", what()))),
            (None, false) => path.clone(),
        };
        model::check_target_path(&target)
            .map_err(|why| PackageError::Invalid(format!("{}: {why}", what())))?;
        let name = model::file_name(&target).to_string();
        if model::RESERVED_FILE_NAMES.contains(&name.as_str()) {
            return Err(PackageError::Invalid(format!(
                "{}: the file name {name:?} is reserved for the package's scripts",
                what()
            )));
        }
        let source = fetch(&template.file, files)?;
        if let Some(declared) = &template.sha256
            && *declared != sha256_hex(&source)
        {
            return Err(PackageError::Invalid(format!(
                "{}: the stored file does not match its sha256 {declared}",
                what()
            )));
        }
        let data = rendered(request, template, source, hb, context, &what)?;
        let file = InstalledFile::new(master, template, &target, name, &data);
        self.push(format!("{}/{}", master.dir, file.name), FILE_MODE, data);
        self.targets.push(target);
        Ok(file)
    }

    /// The entries in archive order, with the manifest and its checksums first.
    fn finish(mut self, manifest: Value) -> Vec<Entry> {
        let mut dirs: Vec<Entry> = self
            .dirs
            .iter()
            .map(|d| Entry {
                path: format!("{d}/"),
                mode: SCRIPT_MODE,
                data: Vec::new(),
            })
            .collect();
        self.entries.append(&mut dirs);
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
        let mut sums: Vec<String> = vec![format!("{}  manifest.json", sha256_hex(&manifest))];
        sums.extend(
            self.entries
                .iter()
                .filter(|e| !e.path.ends_with('/'))
                .map(|e| format!("{}  {}", sha256_hex(&e.data), e.path)),
        );
        let mut entries = vec![
            Entry {
                path: "manifest.json".into(),
                mode: FILE_MODE,
                data: manifest,
            },
            Entry {
                path: "manifest.sha256".into(),
                mode: FILE_MODE,
                data: lines(&sums),
            },
        ];
        entries.append(&mut self.entries);
        entries
    }
}

fn optional(file: &Option<FileRef>, files: &Files<'_>) -> Result<Vec<u8>, PackageError> {
    file.as_ref().map_or(Ok(Vec::new()), |f| fetch(f, files))
}

/// A template's bytes as they ship: rendered, or copied (raw templates,
/// and files that are not UTF-8, which handlebars cannot hold).
fn rendered(
    request: &Request<'_>,
    template: &TemplateEntry,
    source: Vec<u8>,
    hb: &handlebars::Handlebars<'_>,
    context: Option<&Value>,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>, PackageError> {
    if template.render == Render::Raw {
        return Ok(source);
    }
    let text = match String::from_utf8(source) {
        Ok(text) => text,
        // Not text: it cannot hold an expression either; kept byte for byte.
        Err(not_text) => return Ok(not_text.into_bytes()),
    };
    let render_error = |reason: String| PackageError::Render {
        template_id: template.template_id,
        name: template.name.clone(),
        version_no: render_set_version(template.version),
        edge: request
            .edge
            .map_or_else(String::new, |e| format!(" for edge {}", e.edge_id)),
        reason,
    };
    let context = match context {
        Some(context) => context.clone(),
        None => match render::kind(&text).map_err(render_error)? {
            Kind::Static => Value::Object(serde_json::Map::new()),
            Kind::PerEdge => return Err(PackageError::NeedsEdge(what())),
        },
    };
    render::render(hb, &text, &context)
        .map(String::into_bytes)
        .map_err(render_error)
}

/// A file of the package, for the manifest and the install line.
struct InstalledFile {
    name: String,
    target: String,
    owner: String,
    group: String,
    mode: u32,
    json: Value,
}

impl InstalledFile {
    fn new(
        master: &MasterEntry,
        template: &TemplateEntry,
        target: &str,
        name: String,
        data: &[u8],
    ) -> InstalledFile {
        let json = json!({
            "template_id": template.template_id,
            "name": template.name,
            "version_no": render_set_version(template.version),
            "file": format!("{}/{name}", master.dir),
            "path": target,
            "owner": template.owner,
            "group": template.group,
            "permissions": format!("{:04o}", template.mode),
            "sha256": sha256_hex(data),
            "size": data.len(),
        });
        InstalledFile {
            name,
            target: target.to_string(),
            owner: template.owner.clone(),
            group: template.group.clone(),
            mode: template.mode,
            json,
        }
    }
}

/// A word for the shell, single-quoted.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn install_line(file: &InstalledFile) -> String {
    format!(
        "caldera_install {} {} {} {} {:04o} || return 1\n",
        shell_quote(&file.name),
        shell_quote(&file.target),
        shell_quote(&file.owner),
        shell_quote(&file.group),
        file.mode
    )
}

/// The master's pre-script, then the generated installation of its files.
fn prescript(pre: &[u8], install: &[String]) -> Vec<u8> {
    let mut script = pre.to_vec();
    if !script.is_empty() && !script.ends_with(b"\n") {
        script.push(b'\n');
    }
    script.extend_from_slice(b"# --- generated by caldera: install this package's files ---\n");
    for line in install {
        script.extend_from_slice(line.as_bytes());
    }
    script.extend_from_slice(b":\n");
    script
}

fn manifest_json(request: &Request<'_>, packages: &[Value]) -> Value {
    let manifest = request.manifest;
    let mut json = json!({
        "format": FORMAT,
        "generator": GENERATOR,
        "edge_type": manifest.edge_type,
        "edge_sub_type": manifest.edge_sub_type,
        "from_set_version": request.since.seq().map(render_set_version),
        "to_set_version": render_set_version(manifest.latest_set_seq),
        "packages": packages,
    });
    if let Some(edge) = request.edge {
        json["edge_id"] = json!(edge.edge_id);
    }
    json
}

/// Writes a tar.gz with fixed metadata.
fn tar_gz(entries: &[Entry], mtime: i64) -> std::io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mtime = u64::try_from(mtime).unwrap_or(0);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let is_dir = entry.path.ends_with('/');
        header.set_entry_type(if is_dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        header.set_mtime(mtime);
        header.set_size(entry.data.len() as u64);
        tar.append_data(&mut header, &entry.path, entry.data.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()
}
