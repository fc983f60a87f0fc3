"""The HuggingFace hub as a user meets it: names, tokens, gated models, and no network.

- Names: a zoo name is its local directory, an existing directory is itself, a TransformerLens
  name (model_names.py) is its hub repository; anything that looks like a path must exist.
- Tokens are resolved as huggingface_hub resolves them (token=..., then HF_TOKEN, then the login
  stored by huggingface_hub.login()); lensutil passes them on and never prints, logs or stores one.
  `hf_token_status()` says whether one is configured and where from, never its value.
- Every refusal is its own ModelAccessError subclass (errors.py) saying what to do, chosen from the
  huggingface_hub exception behind transformers' OSError. The hub's errors are not chained onto
  ours: their text (scrubbed of anything token-shaped) is quoted in the message instead.
- No network: a short probe of the endpoint before transformers starts (its retries cost about
  23 s per file), then the cached files, or an error at once.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..errors import (
    GatedModelError,
    HubUnreachableError,
    InvalidTokenError,
    ModelAccessError,
    ModelNotFoundError,
    RevisionNotFoundError,
)
from . import names as model_names, zoo

# How long the endpoint probe waits to connect. A live endpoint is connected at once even on a busy machine
# (the kernel accepts the connection, not the server's code); once connected, the answer is awaited as long as
# huggingface_hub itself would wait (HF_HUB_ETAG_TIMEOUT, 10 s by default), never less: a slow answer from a
# loaded server is an answer, not an unreachable hub.
PROBE_CONNECT_TIMEOUT_S = 3.0

_TOKEN_SHAPED = re.compile(r"hf_[A-Za-z0-9]{8,}")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer\s+)?)[^\s'\",}]+")


# ---- tokens ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenStatus:
    """Whether a HuggingFace token is configured, and where from. It never holds the token."""

    configured: bool
    # "token= argument", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "stored login", "HF_OIDC_RESOURCE",
    # "Google Colab secret", or "none"
    source: str

    def __str__(self) -> str:
        if not self.configured:
            return ("No HuggingFace token is configured: public models load, gated and private ones do not. "
                    "Set HF_TOKEN, run huggingface_hub.login(), or pass token=... .")
        where = {"stored login": "the login stored by huggingface_hub.login()",
                 "token= argument": "the token= argument"}.get(self.source, f"{self.source}")
        return f"A HuggingFace token is configured, from {where}."


def hf_token_status(token: str | bool | None = None) -> TokenStatus:
    """Which token a hub request would carry, in huggingface_hub's order: token=, HF_TOKEN, stored login.

    lensutil's own (TransformerLens has none). The value is never returned, printed or kept.
    """
    if token is False:
        return TokenStatus(False, "none")
    if isinstance(token, str) and token.strip():
        return TokenStatus(True, "token= argument")
    from huggingface_hub import constants, get_token

    if get_token() is None:
        return TokenStatus(False, "none")
    for var in ("HF_OIDC_RESOURCE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # get_token()'s order
        if (os.environ.get(var) or "").strip():
            return TokenStatus(True, var)
    if os.path.isfile(constants.HF_TOKEN_PATH):
        return TokenStatus(True, "stored login")
    return TokenStatus(True, "Google Colab secret")


def scrub(text: str, token: str | bool | None = None) -> str:
    """`text` with the token (given, or the configured one), token-shaped strings and Authorization values hidden."""
    secrets = [token] if isinstance(token, str) and token.strip() else []
    try:
        from huggingface_hub import get_token

        configured = get_token()
        secrets += [configured] if configured else []
    except Exception:  # a broken OIDC set-up must not hide the error being explained
        pass
    for secret in secrets:
        text = text.replace(secret.strip(), "<token>")
    return _AUTH_HEADER.sub(r"\1<token>", _TOKEN_SHAPED.sub("hf_<token>", text))


# ---- names -------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name": never these shapes.
    return (name.startswith(("./", "../", "/", "~", ".\\", "..\\")) or name in (".", "..")
            or "\\" in name or name.endswith("/") or name.count("/") > 1)


def resolve_name(name_or_path) -> str:
    """A zoo name -> its directory; a directory -> itself; a TransformerLens name -> its hub repository."""
    name = str(name_or_path)
    if zoo.is_zoo_name(name):
        return str(zoo.resolve(name))
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if _looks_like_path(name):
        what = "a file, not a directory" if os.path.exists(os.path.expanduser(name)) else "no such directory"
        raise ModelNotFoundError(
            f"{name!r} looks like a local path, but there is {what}. from_pretrained(path) wants a directory holding a "
            "HuggingFace model (config.json, model.safetensors, tokenizer files) or one written by model.save_pretrained(); "
            "relative paths start from the current working directory (os.getcwd()). A weights file loads with "
            "model.load_and_process_state_dict(lensutil.loading.state_dict.load_torch_file(path))."
        )
    official = model_names.official_name(name)
    if official in model_names.NOT_ON_HUB:
        raise ModelNotFoundError(
            f"{name!r} is TransformerLens' name of {official!r}, the original LLaMA, which is not on the HuggingFace hub "
            "(TransformerLens loads it from a local directory too). Pass the directory of the converted weights, or use "
            "a hosted Llama such as 'meta-llama/Llama-2-7b-hf' (gated) or the zoo's 'tiny-llama'."
        )
    return official or name


# ---- reaching the hub --------------------------------------------------------------------------


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def unreachable_reason() -> str | None:
    """None if the hub endpoint answers at all, else why not (one line).

    Any HTTP answer counts, even an error status: only the network is probed (no token is sent).
    Connecting gets PROBE_CONNECT_TIMEOUT_S, the answer HF_HUB_ETAG_TIMEOUT (huggingface_hub's own wait).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    wait = float(constants.HF_HUB_ETAG_TIMEOUT)
    timeout = (PROBE_CONNECT_TIMEOUT_S, wait, wait, wait)  # connect, read, write, pool (httpx's order)
    try:
        get_session().head(_endpoint(), timeout=timeout, follow_redirects=False)
    except Exception as err:  # connection refused, DNS failure, timeout, TLS failure: all "cannot reach"
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no answer'}"
    return None


def _waited(reason: str) -> str:
    """How long the probe waited, from what failed (not from a clock, so the message is the same on any machine)."""
    from huggingface_hub import constants

    if reason.startswith("ConnectTimeout"):
        return f"{PROBE_CONNECT_TIMEOUT_S:g} s without a connection"
    if reason.startswith(("ReadTimeout", "WriteTimeout", "PoolTimeout")):
        return f"HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s without an answer"
    return "a moment"


def _is_cached(repo: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)


def hub_kwargs(name: str, repo: str, revision: str | None, token) -> dict:
    """The keyword arguments transformers gets for a hub repository, after checking the hub can be reached.

    HF_HUB_OFFLINE=1: left to transformers (cache only). Hub unreachable: the cached files
    (local_files_only=True), or a HubUnreachableError now rather than after minutes of retries.
    """
    from huggingface_hub import constants

    kwargs = {"revision": revision, "token": token}
    if constants.HF_HUB_OFFLINE:
        return kwargs
    reason = unreachable_reason()
    if reason is None:
        return kwargs
    if _is_cached(repo, revision):
        return {**kwargs, "local_files_only": True}
    shown = repr(name) if name == repo else f"{name!r} ({repo!r})"
    raise HubUnreachableError(
        f"Cannot reach the HuggingFace hub at {_endpoint()} ({scrub(reason, token)}; gave up after "
        f"{_waited(reason)}), and {shown} is not in the "
        f"local HuggingFace cache. {_OFFLINE_FIXES}"
    )


_OFFLINE_FIXES = (
    f"Without a network: load a zoo model ({', '.join(zoo.ZOO_NAMES)}), or a local directory "
    "(from_pretrained('/path/to/model')); models downloaded before load from the cache, and HF_HUB_OFFLINE=1 "
    "(set before transformers is imported) skips the hub entirely. Behind a proxy, set HTTPS_PROXY; for a mirror, HF_ENDPOINT."
)


# ---- explaining refusals -----------------------------------------------------------------------


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def explain(name: str, err: BaseException, *, repo: str | None = None, revision: str | None = None,
            token=None, local: bool = False) -> ModelAccessError:
    """The ModelAccessError subclass for a failed load, with what to do. Never contains a token."""
    from huggingface_hub import errors as hf

    repo = repo or str(name)
    chain = list(_chain(err))
    # Quote the hub's own answer (its status line) where there is one, else what transformers said.
    quoted = next((e for e in chain if isinstance(e, hf.HfHubHTTPError)), err)
    underlying = scrub(f"{type(quoted).__name__}: {str(quoted).splitlines()[0][:300] if str(quoted) else ''}", token)
    page = f"{_endpoint()}/{repo}"
    renamed = not local and repo != str(name) and model_names.official_name(str(name)) == repo
    called = f"{str(name)!r} (TransformerLens' name of {repo!r})" if renamed else repr(str(name))

    def first(kind):
        return next((e for e in chain if isinstance(e, kind)), None)

    text = "\n".join(f"{type(e).__name__}: {e}" for e in chain)
    if local:
        cls, advice = ModelAccessError, (
            f"Could not load the local directory {str(name)!r}: a HuggingFace model directory holds config.json, "
            "the weights (model.safetensors) and the tokenizer files; one from model.save_pretrained() holds "
            "lensutil_config.json and lensutil_weights.safetensors.")
    elif (gated := first(hf.GatedRepoError)) is not None:
        status = hf_token_status(token)
        cls = GatedModelError
        if _status(gated) == 403 or status.configured:
            advice = (
                f"{called} is a gated model, and the token sent ({status.source}) belongs to an account that has no "
                f"access to it yet. Sign in to the hub with the account the token belongs to, open {page} and accept "
                "the licence (some are reviewed: wait for the e-mail), or use a token of an account that has access. "
                "A fine-grained token also needs read access to public gated repositories. lensutil.hf_token_status() "
                "says which token is used.")
        else:
            advice = (
                f"{called} is a gated model, and no HuggingFace token was sent. 1. Open {page}, sign in and accept "
                f"the licence (some are reviewed: wait for the e-mail). 2. Create a read token at {_endpoint()}/settings/tokens. "
                "3. Set the HF_TOKEN environment variable, run huggingface_hub.login(), or pass token=... "
                "(lensutil never prints or stores the token).")
    elif (rev := first(hf.RevisionNotFoundError)) is not None:
        cls, advice = RevisionNotFoundError, (
            f"{called} exists, but has no revision {revision!r} (a branch, tag or commit hash). Leave revision out for "
            f"'main', or pick one of the branches and commits listed at {page}/tree/main.")
    elif first(hf.RepositoryNotFoundError) is not None or first(hf.HFValidationError) is not None:
        cls = ModelNotFoundError
        asked = {str(name).lower(), repo.lower()}
        close = [c for c in model_names.close_names(str(name), extra=zoo.ZOO_NAMES)
                 if c.lower() not in asked and model_names.official_name(c) != repo]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        kind = "is not a valid hub repository name" if first(hf.HFValidationError) else "was not found on the hub"
        advice = (
            f"{called} {kind}, and there is no local directory, zoo model or TransformerLens name of that name.{hint} "
            "lensutil.list_models() lists the names from_pretrained knows. A private repository also answers "
            "'not found' unless the token belongs to an account that can read it.")
    elif (bad := first(hf.HfHubHTTPError)) is not None and _status(bad) == 401:
        status = hf_token_status(token)
        cls, advice = InvalidTokenError, (
            f"The hub rejected the HuggingFace token ({status.source}) while loading {called}: it is mistyped, "
            f"expired or revoked (the hub: 'Invalid credentials in Authorization header'). Create a read token at "
            f"{_endpoint()}/settings/tokens and set HF_TOKEN or run huggingface_hub.login() with it; public models "
            "also load with no token at all (unset HF_TOKEN, or huggingface_hub.logout()).")
    elif first(hf.OfflineModeIsEnabled) is not None or first(hf.LocalEntryNotFoundError) is not None \
            or "couldn't connect" in text.lower() or first(ConnectionError) is not None:
        cls, advice = HubUnreachableError, (
            f"Could not load {called}: the hub is not reachable (or HF_HUB_OFFLINE=1 is set) and the files are not in "
            f"the local HuggingFace cache. {_OFFLINE_FIXES}")
    elif "gated" in text.lower() or " 403 " in f" {text} " or " 401 " in f" {text} ":
        cls, advice = GatedModelError, (
            f"{called} refused access: it is probably a gated model. Accept its licence on the model's hub page, "
            "create a read token, then set the HF_TOKEN environment variable, run huggingface_hub.login(), or pass "
            "token=... (lensutil never prints or stores the token).")
    else:
        cls, advice = ModelAccessError, (
            f"Could not load {called} from the hub or from disk. Offline? Use a zoo name "
            f"({', '.join(zoo.ZOO_NAMES)}) or a local directory written by save_pretrained().")
    failure = cls(scrub(f"{advice}\n(underlying error: {underlying})", token))
    failure.hub_error = type(err).__name__  # what huggingface_hub/transformers raised, for the curious
    return failure

