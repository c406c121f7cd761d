//! `cai constitution check|show`: validate or list constitution files.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::constitution;

/// `cai constitution <action>`; the files are the arguments, so there is no `--config`.
#[derive(Debug, Subcommand)]
pub enum ConstitutionCommand {
    /// Validate constitution files; problems are printed as file:line:column.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List a constitution's principles and examples.
    Show { file: PathBuf },
}

impl ConstitutionCommand {
    /// Runs the action.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Check { files } => check(&files),
            Self::Show { file } => {
                let loaded = constitution::Loaded::read_valid(&file)?;
                print!("{}", constitution::describe(&loaded.constitution));
                Ok(())
            }
        }
    }
}

fn check(files: &[PathBuf]) -> Result<()> {
    let mut bad = 0;
    for f in files {
        match constitution::Loaded::read(f) {
            Err(e) => {
                println!("{e:#}");
                bad += 1;
            }
            Ok(loaded) => {
                let problems = loaded.validate();
                if problems.is_empty() {
                    let c = &loaded.constitution;
                    println!(
                        "{}: ok ({} principles, {} comparison principles, {} + {} examples)",
                        f.display(),
                        c.principles.len(),
                        c.comparison_principles.len(),
                        c.examples.revision.len(),
                        c.examples.comparison.len()
                    );
                } else {
                    println!("{}", loaded.format_problems(&problems));
                    bad += 1;
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} constitution file(s) have problems",
            files.len()
        );
    }
    Ok(())
}
