//! The body infers exactly as without the attribute: `?` with `From`, early returns,
//! boxed errors, `anyhow`, and `Result` aliases.
use idem::idempotent;

#[derive(Debug)]
pub enum AppError {
    Idem(idem::Error),
    Parse(std::num::ParseIntError),
}

impl From<idem::Error> for AppError {
    fn from(error: idem::Error) -> Self {
        AppError::Idem(error)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(error: std::num::ParseIntError) -> Self {
        AppError::Parse(error)
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[idempotent(key = text)]
pub async fn question_mark(text: String) -> AppResult<u64> {
    let parsed: u64 = text.parse()?;
    if parsed == 0 {
        return Ok(0);
    }
    Ok(parsed)
}

#[idempotent(key = text)]
pub async fn boxed(text: String) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    if text.is_empty() {
        return Err("empty".into());
    }
    Ok(text.parse::<u64>()?)
}

#[idempotent(key = text)]
pub async fn with_anyhow(text: String) -> anyhow::Result<u64> {
    let parsed = text.parse::<u64>()?;
    anyhow::ensure!(parsed > 0, "zero");
    Ok(parsed)
}

#[idempotent(key = text)]
pub async fn falls_off_the_end(text: String) -> Result<(), AppError> {
    text.parse::<u64>()?;
    Ok(())
}

fn main() {}
