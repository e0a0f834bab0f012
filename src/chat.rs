//! An OpenAI-compatible chat-completions client. The judge, the tool simulator and an
//! endpoint-backed model all speak it; each decides what a usable reply is.

use std::time::Duration;

use serde_json::Value;

/// What the caller makes of one HTTP reply.
pub enum Verdict<T> {
    Use(T),
    /// Ask again (a reply the caller cannot use, as upstream's loops retry it).
    Again(String),
    /// Stop: asking again will not help.
    Fail(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// A 4xx other than 429, or a reply the caller refused.
    #[error("{endpoint}: {message}")]
    Refused { endpoint: String, message: String },
    /// Every attempt failed; `replied` when the last one got a reply the caller asked
    /// again.
    #[error("{endpoint}: {attempts} attempts failed; the last: {last}")]
    Exhausted {
        endpoint: String,
        attempts: usize,
        last: String,
        replied: bool,
    },
}

pub struct Client {
    /// `<url>/chat/completions`.
    pub endpoint: String,
    key: Option<String>,
    agent: ureq::Agent,
    attempts: usize,
    /// The first retry waits this long; each next one twice as long.
    backoff: Duration,
}

impl Client {
    /// A client of `url` (`/chat/completions` is appended); a blank key sends no
    /// Authorization header.
    pub fn new(url: &str, key: Option<String>, timeout: Duration) -> Client {
        Client {
            endpoint: format!("{}/chat/completions", url.trim_end_matches('/')),
            key: key.filter(|k| !k.trim().is_empty()),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }

    /// `text` with the API key blanked, for anything stored or shown, in every spelling it
    /// can come back in: as sent, JSON-escaped (inside a JSON string) and URL-encoded.
    pub fn scrub(&self, text: &str) -> String {
        let Some(k) = &self.key else {
            return text.to_string();
        };
        let json = serde_json::to_string(k).unwrap_or_default();
        let json = json.trim_matches('"').to_string();
        let url: String = k
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut out = text.to_string();
        for form in [k.clone(), json, url.clone(), url.to_lowercase()] {
            if !form.is_empty() {
                out = out.replace(&form, "[API key]");
            }
        }
        out
    }

    /// A reply with the key scrubbed from every string in it.
    pub fn scrub_value(&self, v: Value) -> Value {
        match self.key {
            Some(_) => serde_json::from_str(&self.scrub(&v.to_string())).unwrap_or(v),
            None => v,
        }
    }

    /// Posts `body` until `accept` uses a reply, a 4xx other than 429 comes back, or the
    /// attempts run out.
    pub fn post<T>(
        &self,
        body: &Value,
        accept: impl Fn(Value) -> Verdict<T>,
    ) -> Result<T, ChatError> {
        let (mut last, mut replied) = (String::new(), false);
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(self.backoff * (1 << (attempt - 1)));
            }
            let mut req = self
                .agent
                .post(&self.endpoint)
                .set("Content-Type", "application/json");
            if let Some(k) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            match req.send_json(body) {
                Ok(resp) => {
                    let v: Value = match resp.into_json() {
                        Ok(v) => v,
                        Err(e) => return Err(self.refused(format!("unreadable reply: {e}"))),
                    };
                    match accept(v) {
                        Verdict::Use(t) => return Ok(t),
                        Verdict::Again(why) => (last, replied) = (why, true),
                        Verdict::Fail(why) => return Err(self.refused(why)),
                    }
                }
                // 4xx other than rate limits will not get better by asking again.
                Err(ureq::Error::Status(code, resp)) if code != 429 && code < 500 => {
                    let text: String = resp
                        .into_string()
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    return Err(self.refused(format!("HTTP {code}: {text}")));
                }
                Err(e) => (last, replied) = (e.to_string(), false),
            }
        }
        Err(ChatError::Exhausted {
            endpoint: self.endpoint.clone(),
            attempts: self.attempts,
            last: self.scrub(&last),
            replied,
        })
    }

    fn refused(&self, message: String) -> ChatError {
        ChatError::Refused {
            endpoint: self.endpoint.clone(),
            message: self.scrub(&message),
        }
    }
}

/// The text of a reply's first choice.
pub fn content(reply: &Value) -> Option<&str> {
    reply["choices"][0]["message"]["content"].as_str()
}

/// The summed log-probability of a reply's tokens and their count, when the endpoint
/// returned them (`logprobs: true`).
pub fn logprob_sum(reply: &Value) -> Option<(f64, usize)> {
    let tokens = reply["choices"][0]["logprobs"]["content"].as_array()?;
    let lps: Vec<f64> = tokens
        .iter()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    (!lps.is_empty()).then(|| (lps.iter().sum(), lps.len()))
}
