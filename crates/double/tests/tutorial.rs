//! The CREODIAS tutorial's Python script, verbatim except for its two host names, run against
//! the double: it must log in with TOTP and download the product. Needs python3 with `requests`
//! and `pyotp`; when they are missing the test says so and passes (set
//! `FAKE_CREODIAS_REQUIRE_PYTHON=1` to make that a failure, e.g. in CI where they are installed).

mod common;

use std::process::Command;

use common::*;

/// The tutorial's download.py (https://creodias.docs.cloudferro.com, "Use Python to automate
/// generating API tokens ... when 2FA is enabled"), hosts replaced by `{IDENTITY}`/`{ZIPPER}`.
/// Debian's Python, where `scripts/install-deps` puts requests and pyotp (python3-requests,
/// python3-pyotp); a python3 earlier on PATH (pyenv, venv) may have neither.
const PYTHON: &str = "/usr/bin/python3";

const TUTORIAL: &str = r#"import pyotp  # to compute the TOTP code
import requests # to send through POST to the server
from urllib.parse import quote # to encode password if needed
import json
import configparser

login_data = configparser.ConfigParser()
login_data.read('secrets.conf')

def curl_request(url, user, password, totp):
    headers = {
        'Content-Type': 'application/x-www-form-urlencoded',
    }
    data = 'client_id=CLOUDFERRO_PUBLIC&username=' + user + '&password=' + password + '&grant_type=password&totp=' + totp
    response = requests.post(url, data=data, headers=headers)
    return response

read_secret = login_data['login']['totp_secret']
secret = read_secret.replace(" ", "")

totp_secret = pyotp.TOTP(secret)
totp = totp_secret.now()

url = '{IDENTITY}/auth/realms/Creodias-new/protocol/openid-connect/token?'
user = login_data['login']['user']
password = login_data['login']['password']
password_encoded = quote(password, safe='')
response = curl_request(url, user, password_encoded, totp)

# deserializes into dict and returns dict.
dictionary = json.loads(response.content.decode())
KEYCLOAK_TOKEN = dictionary['access_token']

url_download = '{ZIPPER}/download/db0c8ef3-8ec0-5185-a537-812dad3c58f8'
url_download_using_token = url_download + '?token=' + KEYCLOAK_TOKEN

# downloads the file
pulling = requests.get(url_download_using_token)
open("my-file.zip", 'wb').write(pulling.content)
"#;

fn python_ready() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import pyotp, requests"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_tutorial_script_logs_in_and_downloads() {
    if !python_ready() {
        assert!(
            std::env::var_os("FAKE_CREODIAS_REQUIRE_PYTHON").is_none(),
            "python3 with pyotp and requests is required"
        );
        eprintln!("SKIPPED: python3 with pyotp and requests not available");
        return;
    }
    fresh_step(10).await;
    let store = store();
    let (d, _) = start(config().products(store.dir.path())).await;
    let work = tempfile::tempdir().unwrap();
    // configparser interpolation: `%` is written `%%` in secrets.conf (protocol.md).
    let conf = format!(
        "[login]\nuser = {USER}\npassword = {}\ntotp_secret = {}\n",
        PASSWORD.replace('%', "%%"),
        "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP"
    );
    assert_eq!(SECRET, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP");
    std::fs::write(work.path().join("secrets.conf"), conf).unwrap();
    let script = TUTORIAL
        .replace("{IDENTITY}", &d.base_url())
        .replace("{ZIPPER}", &d.base_url());
    std::fs::write(work.path().join("download.py"), script).unwrap();
    let out = tokio::process::Command::new(PYTHON)
        .arg("download.py")
        .current_dir(work.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(work.path().join("my-file.zip")).unwrap();
    assert_eq!(got, store.bytes);
    let outcomes: Vec<(String, String)> = d
        .log()
        .into_iter()
        .map(|e| (e.service, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("token".to_string(), "ok".to_string()),
            ("zipper".into(), "ok".into())
        ]
    );
}
