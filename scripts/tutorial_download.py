#!/usr/bin/env python3
"""The CREODIAS tutorial's download.py, kept as close to verbatim as possible.

Source: "Use Python to automate generating API tokens for accessing and downloading EODATA when
2FA is enabled on CREODIAS", Step 3. This file exists so that tests can prove the double
(fake-creodias) answers the tutorial's own client exactly as CREODIAS does: the same
string-concatenated form body (password percent-encoded, user not), the token URL with its
trailing '?', the legacy `/download/<uuid>?token=` URL, and the whole body written to a file
without any status check (as in the tutorial: an error body lands in the file too).

Changed from the tutorial, and only this:
  * hosts come from the environment, defaulting to the tutorial's:
      EODATA_TOKEN_URL      the full token URL (give it with the trailing '?' to stay faithful)
      EODATA_DOWNLOAD_BASE  the download base, <base>/<product id> is fetched
  * argv: [PRODUCT_ID [OUTPUT_FILE [SECRETS_CONF]]], defaulting to the tutorial's product,
    "my-file.zip" and "secrets.conf" in the current directory;
  * pyotp is used when importable, else an RFC 6238 fallback (below) computes the same code.

The shebang says python3, but the tests run this with /usr/bin/python3: that interpreter has
Debian's python3-requests; another python3 on PATH (e.g. pyenv's) may not.
"""

import os
import sys

try:
    import pyotp  # to compute the TOTP code
except ImportError:  # not installed here: the fallback below computes the same code
    pyotp = None
import requests # to send through POST to the server
from urllib.parse import quote # to encode password if needed
import json
import configparser

# The tutorial's values, used when no argument or environment variable overrides them.
TUTORIAL_TOKEN_URL = 'https://identity.cloudferro.com/auth/realms/Creodias-new/protocol/openid-connect/token?'
TUTORIAL_DOWNLOAD_BASE = 'https://zipper.creodias.eu/download'
TUTORIAL_PRODUCT_ID = 'db0c8ef3-8ec0-5185-a537-812dad3c58f8'
TUTORIAL_OUTPUT = 'my-file.zip'

product_id = sys.argv[1] if len(sys.argv) > 1 else TUTORIAL_PRODUCT_ID
output_file = sys.argv[2] if len(sys.argv) > 2 else TUTORIAL_OUTPUT
secrets_path = sys.argv[3] if len(sys.argv) > 3 else 'secrets.conf'


def totp_now(secret):
    """RFC 6238 as pyotp.TOTP(secret).now() computes it: HMAC-SHA1 of the 30 s step counter,
    dynamic truncation, 6 digits, zero-padded. Used only when pyotp is not installed."""
    import base64, hashlib, hmac, struct, time
    key = base64.b32decode(secret + '=' * (-len(secret) % 8), casefold=True)
    digest = hmac.new(key, struct.pack('>Q', int(time.time()) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack('>I', digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000
    return '%06d' % code


login_data = configparser.ConfigParser()
login_data.read(secrets_path)

def curl_request(url, user, password, totp):
    headers = {
        'Content-Type': 'application/x-www-form-urlencoded',
    }
    data = 'client_id=CLOUDFERRO_PUBLIC&username=' + user + '&password=' + password + '&grant_type=password&totp=' + totp
    response = requests.post(url, data=data, headers=headers)
    return response

read_secret = login_data['login']['totp_secret']
secret = read_secret.replace(" ", "")

if pyotp is not None:
    totp_secret = pyotp.TOTP(secret)
    totp = totp_secret.now()
else:
    totp = totp_now(secret)

url = os.environ.get('EODATA_TOKEN_URL', TUTORIAL_TOKEN_URL)
user = login_data['login']['user']
password = login_data['login']['password']
password_encoded = quote(password, safe='')
response = curl_request(url, user, password_encoded, totp)

# deserializes into dict and returns dict.
dictionary = json.loads(response.content.decode())
KEYCLOAK_TOKEN = dictionary['access_token']

url_download = os.environ.get('EODATA_DOWNLOAD_BASE', TUTORIAL_DOWNLOAD_BASE).rstrip('/') + '/' + product_id
url_download_using_token = url_download + '?token=' + KEYCLOAK_TOKEN

# downloads the file
pulling = requests.get(url_download_using_token)
open(output_file, 'wb').write(pulling.content)
