//! `connect-flow doctor [--url DEPLOYMENT_URL]`: checks the Stripe set-up with the platform's key
//! (`STRIPE_API_KEY`, against `STRIPE_API_BASE`) and prints one line per finding, `ok`, `missing`
//! or `wrong`, each of the last two with the call that fixes it (DESIGN.md, "Recovery and
//! operations"). The checks are `shared::doctor`'s; this reads the deployment's signature-failure
//! count from its `healthz?deep=1` when `--url` is given.

use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use serde_json::Value;
use shared::doctor::{
    Finding, SIGNATURE_ALARM, SignatureFailures, all_ok, diagnose, failed_call, webhook_url,
};
use shared::platform::API_TOKEN;
use shared::stripe::client::{StripeClient, StripeClientConfig, StripeError};

/// How long the deployment's `healthz?deep=1` may take: it lists Stripe's endpoints itself.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// The doctor's options.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// This deployment's base URL (the endpoints must point at URL/webhooks/stripe); without it
    /// any endpoint counts, and the lines say the URL was not checked.
    #[arg(long)]
    pub url: Option<String>,
    /// The platform API token, to read URL/healthz?deep=1 from a `serve` that requires one.
    #[arg(long, env = API_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs every check and writes the findings to `out`, one a line. Returns whether all are `ok`.
pub async fn doctor(args: &DoctorArgs, out: &mut impl Write) -> anyhow::Result<bool> {
    let findings = match StripeClientConfig::from_env().and_then(StripeClient::new) {
        Ok(stripe) => {
            let signatures = match &args.url {
                Some(url) => read_signature_failures(url, args.token.as_deref()).await,
                None => SignatureFailures::NotChecked(format!(
                    "pass --url to read the deployment's count; deployed, the {SIGNATURE_ALARM} alarm \
                     watches them"
                )),
            };
            let target = args.url.as_deref().map(webhook_url);
            diagnose(&stripe, target.as_deref(), &signatures).await
        }
        Err(error) => vec![no_client(&error)],
    };
    for finding in &findings {
        writeln!(out, "{}", finding.line()).context("writing the findings")?;
    }
    Ok(all_ok(&findings))
}

fn no_client(error: &StripeError) -> Finding {
    match error {
        StripeError::Config(_) => Finding {
            level: shared::doctor::Level::Missing,
            what: format!("a Stripe client: {error}"),
            fix: Some(
                "set STRIPE_API_KEY to the platform's secret key (and STRIPE_API_BASE, if set at all, \
                 to an https URL or a loopback http one), then run the doctor again"
                    .into(),
            ),
        },
        other => failed_call("building the Stripe client", other),
    }
}

/// The in-process count `serve` answers in `healthz?deep=1`; anything else is said, never taken
/// for zero.
async fn read_signature_failures(deployment_url: &str, token: Option<&str>) -> SignatureFailures {
    let deployed = format!("deployed, the {SIGNATURE_ALARM} alarm watches them");
    let base = deployment_url.trim().trim_end_matches('/');
    let Ok(url) = Url::parse(&format!("{base}/healthz?deep=1")) else {
        return SignatureFailures::NotChecked(format!("{deployment_url:?} is not a URL"));
    };
    let client = match reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => return SignatureFailures::NotChecked(format!("no HTTP client: {error}")),
    };
    let mut request = client.get(url.clone());
    // The token never crosses a network in clear.
    if let Some(token) = token.map(str::trim).filter(|token| !token.is_empty())
        && (url.scheme() == "https" || is_loopback(&url))
    {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => {
            return SignatureFailures::NotChecked(format!(
                "{base}/healthz?deep=1 did not answer; {deployed}"
            ));
        }
    };
    let status = response.status().as_u16();
    if matches!(status, 401 | 403) {
        return SignatureFailures::NotChecked(format!(
            "{base}/healthz?deep=1 answered {status}: pass --token or set {API_TOKEN} for serve; {deployed}"
        ));
    }
    let body: Option<Value> =
        response.bytes().await.ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match body.as_ref().and_then(|body| body.get("signature_failures")) {
        Some(Value::Number(count)) => match count.as_u64() {
            Some(count) => SignatureFailures::InProcess(count),
            None => {
                SignatureFailures::NotChecked(format!("{base}/healthz?deep=1 gave a count that is not one"))
            }
        },
        // A deployed platform API answers the checks but has no count of its own.
        Some(Value::Null) if body.as_ref().is_some_and(|body| body.get("findings").is_some()) => {
            SignatureFailures::Deployed
        }
        _ => SignatureFailures::NotChecked(format!(
            "{base}/healthz?deep=1 answered {status} without a count; {deployed}"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
