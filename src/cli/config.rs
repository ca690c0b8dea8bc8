//! `train --config FILE`: a TOML file of training settings that sits between the preset and
//! the command-line flags (flag > config file > preset), and the `config.toml` every run
//! writes into its directory in the same format, so that a run's file can be read back.
//! `grad_clip`, `ema` and `model.alpha_clip` of 0 mean off, as their flags do.

use std::path::{Path, PathBuf};

use tarflow::train::TrainConfig;
use tarflow::{Error, Result};

/// The key of the preset a file starts from; every other key is a [`TrainConfig`] field.
const PRESET_KEY: &str = "preset";

/// A configuration file, read and parsed.
pub struct ConfigFile {
    path: PathBuf,
    /// The preset the file names, if it names one.
    pub preset: Option<String>,
    table: toml::Table,
}

/// Reads and parses `path` (TOML); only its syntax and the `preset` key are checked here,
/// the settings when they are applied to a preset.
pub fn read(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| Error::format(path.display().to_string(), e.to_string().trim_end()))?;
    let preset = match table.remove(PRESET_KEY) {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(v) => {
            return Err(Error::format(
                path.display().to_string(),
                format!("`preset` must be a preset name in quotes, got {v}"),
            ))
        }
    };
    Ok(ConfigFile {
        path: path.to_path_buf(),
        preset,
        table,
    })
}

/// The TOML table of `cfg`, every optional setting included: the keys a file may hold and
/// the type each takes.
fn every_key(cfg: &TrainConfig) -> Result<toml::Table> {
    let mut probe = cfg.clone();
    probe.grad_clip.get_or_insert(1.0);
    probe.ema.get_or_insert(0.999);
    probe.data.get_or_insert_with(PathBuf::new);
    probe.model.alpha_clip.get_or_insert(4.0);
    probe.precision = tarflow::backend::Precision::Bf16;
    probe.recompute = tarflow::model::Recompute::Layer;
    table_of(&probe)
}

fn table_of(cfg: &TrainConfig) -> Result<toml::Table> {
    toml::Table::try_from(cfg).map_err(|e| Error::Config(format!("configuration to TOML: {e}")))
}

/// "an integer", "a string", ...: the type of `v` for a message.
fn a_type(v: &toml::Value) -> String {
    let t = v.type_str();
    let article = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {t}")
}

impl ConfigFile {
    fn err(&self, detail: String) -> Error {
        Error::format(self.path.display().to_string(), detail)
    }

    /// `base` (a preset) with the file's settings on top. A key that is no setting, or a
    /// value of the wrong type, is an error naming the key; the result is not validated
    /// (the flags still apply).
    pub fn apply(&self, base: &TrainConfig) -> Result<TrainConfig> {
        let known = every_key(base)?;
        let mut merged = table_of(base)?;
        self.merge(&mut merged, &self.table, &known, "")?;
        let mut cfg = toml::Value::Table(merged)
            .try_into::<TrainConfig>()
            .map_err(|e| self.err(e.to_string().trim_end().to_string()))?;
        // 0 switches these off, as their flags do (TOML has no "none").
        for v in [&mut cfg.grad_clip, &mut cfg.ema, &mut cfg.model.alpha_clip] {
            if *v == Some(0.0) {
                *v = None;
            }
        }
        Ok(cfg)
    }

    /// Puts the entries of `file` into `into`, checking each key and type against `known`.
    /// The `model` table merges key by key; any other value (the `noise` mode included)
    /// replaces the preset's.
    fn merge(
        &self,
        into: &mut toml::Table,
        file: &toml::Table,
        known: &toml::Table,
        prefix: &str,
    ) -> Result<()> {
        for (key, value) in file {
            let name = format!("{prefix}{key}");
            let Some(like) = known.get(key) else {
                let mut keys: Vec<&str> = known.keys().map(String::as_str).collect();
                if prefix.is_empty() {
                    keys.insert(0, PRESET_KEY);
                }
                return Err(self.err(format!(
                    "unknown setting `{name}` (known: {})",
                    keys.join(", ")
                )));
            };
            match (like, value) {
                (toml::Value::Table(k), toml::Value::Table(v)) if key == "model" => {
                    let mut sub = match into.remove(key) {
                        Some(toml::Value::Table(t)) => t,
                        _ => toml::Table::new(),
                    };
                    self.merge(&mut sub, v, k, "model.")?;
                    into.insert(key.clone(), toml::Value::Table(sub));
                }
                // The enum `noise` has several shapes; serde checks it.
                (toml::Value::Table(_), _) => {
                    into.insert(key.clone(), value.clone());
                }
                // An integer where a float is expected is that number.
                (toml::Value::Float(_), toml::Value::Integer(i)) => {
                    into.insert(key.clone(), toml::Value::Float(*i as f64));
                }
                (l, v) if std::mem::discriminant(l) == std::mem::discriminant(v) => {
                    into.insert(key.clone(), value.clone());
                }
                (l, v) => {
                    return Err(self.err(format!(
                        "`{name}` is {}, expected {} (like {l})",
                        a_type(v),
                        a_type(l)
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The text of `config.toml`: the resolved configuration of a run, readable by `--config`.
/// A setting that is off (no gradient clip, no EMA, no soft clip) is written as 0, so that
/// reading the file back does not fall back on a preset that has it on.
pub fn to_toml(preset: Option<&str>, cfg: &TrainConfig) -> Result<String> {
    let mut cfg = cfg.clone();
    cfg.grad_clip.get_or_insert(0.0);
    cfg.ema.get_or_insert(0.0);
    cfg.model.alpha_clip.get_or_insert(0.0);
    let body = toml::to_string_pretty(&cfg)
        .map_err(|e| Error::Config(format!("configuration to TOML: {e}")))?;
    let mut out = String::from(
        "# The resolved configuration of a tarflow training run. `tarflow train --config FILE`\n\
         # reads it back; flags given with it override it.\n",
    );
    if let Some(p) = preset {
        out.push_str(&format!("{PRESET_KEY} = {:?}\n", p));
    }
    out.push_str(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut f = ConfigFile {
            path: PathBuf::from("c.toml"),
            preset: None,
            table,
        };
        if let Some(toml::Value::String(p)) = f.table.remove(PRESET_KEY) {
            f.preset = Some(p);
        }
        f
    }

    #[test]
    fn written_configuration_reads_back_identically() {
        for preset in ["mnist", "mnist-likelihood-long", "cifar10"] {
            let mut cfg = TrainConfig::preset(preset).unwrap();
            cfg.ema = Some(0.999);
            cfg.data = Some(PathBuf::from("/data/x"));
            // Off here, on in the preset read back into below.
            cfg.grad_clip = None;
            let text = to_toml(Some(preset), &cfg).unwrap();
            let f = file(&text);
            assert_eq!(f.preset.as_deref(), Some(preset));
            // From another preset, so that every value must come from the file.
            let mut base = TrainConfig::preset("tiny").unwrap();
            base.model.alpha_clip = Some(3.0);
            let back = f.apply(&base).unwrap();
            assert_eq!(back, cfg, "{text}");
        }
    }

    #[test]
    fn a_partial_file_changes_only_its_keys() {
        let base = TrainConfig::preset("mnist").unwrap();
        let f = file("steps = 7\nlr = 1\nnoise = \"Dequantize\"\n[model]\nwidth = 64\n");
        let c = f.apply(&base).unwrap();
        let mut want = base.clone();
        want.steps = 7;
        want.lr = 1.0;
        want.noise = tarflow::train::NoiseMode::Dequantize;
        want.model.width = 64;
        assert_eq!(c, want);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let base = TrainConfig::preset("mnist").unwrap();
        for (text, words) in [
            (
                "stepz = 3",
                &["c.toml", "unknown setting `stepz`", "steps"][..],
            ),
            ("[model]\nwidht = 3", &["unknown setting `model.widht`"]),
            (
                "steps = \"many\"",
                &["`steps` is a string, expected an integer"],
            ),
            ("hflip = 1", &["`hflip` is an integer, expected a boolean"]),
            ("steps = -3", &["c.toml"]),
        ] {
            let e = file(text).apply(&base).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w), "{text}: {w:?} not in {e:?}");
            }
        }
    }
}
