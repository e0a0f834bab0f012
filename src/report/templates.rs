//! Template lookup and rendering. The built-in templates are the files in report-templates/,
//! compiled in; a user's copy (beside the experiment, in ./report-templates/, or any path)
//! takes precedence. A template can include others from its own folder only.

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};

use super::{format, ReportData, ReportError};

/// The built-in templates: one per research question, plus the general one.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "sweep.md.j2",
        include_str!("../../report-templates/sweep.md.j2"),
    ),
    (
        "epochs.md.j2",
        include_str!("../../report-templates/epochs.md.j2"),
    ),
    (
        "stability.md.j2",
        include_str!("../../report-templates/stability.md.j2"),
    ),
    (
        "scaling.md.j2",
        include_str!("../../report-templates/scaling.md.j2"),
    ),
    (
        "evaluators.md.j2",
        include_str!("../../report-templates/evaluators.md.j2"),
    ),
    (
        "generalization.md.j2",
        include_str!("../../report-templates/generalization.md.j2"),
    ),
    (
        "_macros.j2",
        include_str!("../../report-templates/_macros.j2"),
    ),
];

/// The general template, used when an experiment names none.
pub const DEFAULT_TEMPLATE: &str = "sweep.md.j2";

pub fn builtin_template(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix(".md.j2").unwrap_or(name);
    BUILTIN_TEMPLATES
        .iter()
        .find(|(n, _)| n.strip_suffix(".md.j2").unwrap_or(n) == name)
        .map(|(_, s)| *s)
}

/// Where a report's template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    Builtin(String),
    File(PathBuf),
}

impl TemplateSource {
    /// Resolves `[experiment] report`: a file beside the experiment, in ./report-templates/,
    /// a path, or a built-in name (`stability` or `stability.md.j2`).
    pub fn resolve(name: Option<&str>, experiment_dir: Option<&Path>) -> Result<Self, String> {
        let Some(name) = name else {
            return Ok(TemplateSource::Builtin(DEFAULT_TEMPLATE.into()));
        };
        let candidates = [
            experiment_dir.map(|d| d.join(name)),
            Some(Path::new("report-templates").join(name)),
            Some(PathBuf::from(name)),
        ];
        if let Some(p) = candidates.into_iter().flatten().find(|c| c.is_file()) {
            return Ok(TemplateSource::File(p));
        }
        if builtin_template(name).is_some() {
            let base = name.strip_suffix(".md.j2").unwrap_or(name);
            return Ok(TemplateSource::Builtin(format!("{base}.md.j2")));
        }
        let builtins: Vec<&str> = BUILTIN_TEMPLATES
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !n.starts_with('_'))
            .collect();
        Err(format!(
            "template \"{name}\" is neither a file (beside the experiment, in report-templates/, or a path) nor a built-in one ({})",
            builtins.join(", ")
        ))
    }
}

/// Template instructions a report may take: the built-in reports of a 1,000-run sweep need
/// a few million; a runaway loop in a user's template stops here instead of running until
/// killed.
const TEMPLATE_FUEL: u64 = 200_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    register_filters(&mut env);
    env
}

/// The number filters of reports (`pct`, `num`, `signed_pts`, `pvalue`, `si`), for any
/// page that shows the same numbers.
pub fn register_filters(env: &mut Environment<'static>) {
    env.add_filter("pct", format::pct);
    env.add_filter("num", format::num);
    env.add_filter("signed_pts", format::signed_pts);
    env.add_filter("pvalue", format::pvalue);
    env.add_filter("si", format::si);
}

/// A template `name` from `dir`, if it is a regular file whose real path lies inside the
/// real path of `dir`; an include that escapes is an error, a missing one `None`.
fn folder_template(dir: &Path, name: &str) -> Result<Option<String>, minijinja::Error> {
    let refuse = |why: &str| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("template \"{name}\" {why}: includes stay in the template's folder"),
        )
    };
    let Ok(root) = dir.canonicalize() else {
        return Ok(None);
    };
    let Ok(path) = dir.join(name).canonicalize() else {
        return Ok(None);
    };
    if !path.starts_with(&root) {
        return Err(refuse("resolves outside its folder"));
    }
    if !path.is_file() {
        return Err(refuse("is not a regular file"));
    }
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| refuse(&format!("cannot be read ({e})")))
}

/// Renders `data` with a template.
pub fn render(data: &ReportData, source: &TemplateSource) -> Result<String, ReportError> {
    let mut env = environment();
    let (label, text) = match source {
        TemplateSource::Builtin(name) => {
            // Built-ins include each other (the macros) from the compiled-in set only.
            env.set_loader(|name: &str| Ok(builtin_template(name).map(str::to_string)));
            let text = builtin_template(name).unwrap_or_default().to_string();
            (format!("{name} (built in)"), text)
        }
        TemplateSource::File(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ReportError::Template {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            // An include cannot leave the template's folder: names are resolved to real
            // paths (symlinks followed) and must stay inside the folder's real path, and
            // only regular files are read (minijinja's own path loader follows links).
            let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
            env.set_loader(move |name: &str| folder_template(&dir, name));
            (p.display().to_string(), text)
        }
    };
    let tmpl_err = |e: minijinja::Error| ReportError::Template {
        path: label.clone(),
        message: format!("{e:#}")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    env.add_template_owned("__report__", text)
        .map_err(tmpl_err)?;
    env.get_template("__report__")
        .and_then(|t| t.render(data))
        .map_err(tmpl_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_resolve_with_or_without_suffix() {
        assert!(builtin_template("stability").is_some());
        assert!(builtin_template("stability.md.j2").is_some());
        assert!(builtin_template("nope").is_none());
        let err = TemplateSource::resolve(Some("nope"), None).unwrap_err();
        assert!(err.contains("epochs.md.j2"), "{err}");
        assert!(!err.contains("_macros"), "{err}");
    }

    #[test]
    fn a_file_template_cannot_include_outside_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("t");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("secret.txt"), "SECRET").unwrap();
        let t = sub.join("r.md.j2");
        for include in [
            "../secret.txt",
            dir.path().join("secret.txt").to_str().unwrap(),
        ] {
            std::fs::write(&t, format!("{{% include \"{include}\" %}}")).unwrap();
            let data = super::super::analysis::empty_for_tests();
            let err = render(&data, &TemplateSource::File(t.clone())).unwrap_err();
            assert!(!err.to_string().contains("SECRET"), "{err}");
            assert!(err.to_string().contains("outside its folder"), "{err}");
        }
        // An include inside the folder works.
        std::fs::write(sub.join("part.j2"), "PART {{ sweep }}").unwrap();
        std::fs::write(&t, "{% include \"part.j2\" %}").unwrap();
        let data = super::super::analysis::empty_for_tests();
        assert_eq!(
            render(&data, &TemplateSource::File(t)).unwrap(),
            "PART test"
        );
    }
}
