//! The Tencent IM apps a bridge serves, each with its own callback token, optionally its own
//! destination, and the REST credentials the auditor uses. Built from the flags (one token for
//! every listed app) or from a configuration file (`app::config::file`); both end here.

use super::destination::Template;
use crate::tencent::callback::{Signers, Token};
use crate::tencent::rest::RestCredentials;

/// One app, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub sdkappid: u64,
    /// The callback authentication token of Tencent's console; `None`: the app's callbacks
    /// are not signed (authentication is off in the console), so none is checked.
    pub token: Option<Token>,
    /// Where this app's records go, instead of the sink's subject or topic template.
    pub destination: Option<Template>,
    /// Credentials for Tencent's REST API (the auditor's history lookups).
    pub rest: Option<RestCredentials>,
}

impl App {
    /// An app with a token (or none) and the sink's destination.
    pub fn new(sdkappid: u64, token: Option<Token>) -> App {
        App {
            sdkappid,
            token,
            destination: None,
            rest: None,
        }
    }
}

/// Which callbacks are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apps {
    /// Any SdkAppid (development only), with one optional token for all.
    Any { token: Option<Token> },
    /// Only these apps, each verified with its own token. Never empty; no id twice.
    Listed(Vec<App>),
}

impl Apps {
    /// The configured app `sdkappid`, or `None` when it is not served. With [`Apps::Any`],
    /// every app is served and none is configured: `Some(None)`.
    pub fn lookup(&self, sdkappid: u64) -> Option<Option<&App>> {
        match self {
            Apps::Any { .. } => Some(None),
            Apps::Listed(apps) => apps.iter().find(|app| app.sdkappid == sdkappid).map(Some),
        }
    }

    /// The token that signs `sdkappid`'s callbacks, when it is served (`Some(None)`: unsigned).
    pub fn token_for(&self, sdkappid: u64) -> Option<Option<&Token>> {
        match self {
            Apps::Any { token } => Some(token.as_ref()),
            Apps::Listed(_) => self
                .lookup(sdkappid)
                .map(|app| app.and_then(|app| app.token.as_ref())),
        }
    }

    /// The apps whose callbacks the endpoint accepts, with their tokens.
    pub fn signers(&self) -> Signers {
        match self {
            Apps::Any { token } => Signers::Any {
                token: token.clone(),
            },
            Apps::Listed(apps) => Signers::Listed(
                apps.iter()
                    .map(|app| (app.sdkappid, app.token.clone()))
                    .collect(),
            ),
        }
    }

    /// The configured apps (none with [`Apps::Any`]).
    pub fn listed(&self) -> &[App] {
        match self {
            Apps::Any { .. } => &[],
            Apps::Listed(apps) => apps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_has_its_own_token() {
        let apps = Apps::Listed(vec![
            App::new(1, Some(Token::new("one".into()))),
            App::new(2, None),
        ]);
        assert_eq!(apps.token_for(1), Some(Some(&Token::new("one".into()))));
        assert_eq!(apps.token_for(2), Some(None));
        assert_eq!(apps.token_for(3), None);
        let any = Apps::Any {
            token: Some(Token::new("all".into())),
        };
        assert_eq!(any.token_for(3), Some(Some(&Token::new("all".into()))));
        assert!(any.listed().is_empty());
    }
}
