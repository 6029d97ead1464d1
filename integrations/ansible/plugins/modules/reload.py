#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tryswap contributors
# SPDX-License-Identifier: MIT OR Apache-2.0
"""tryswap.tryswap.reload: one host's safe plugin reload, as an Ansible task."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: reload
short_description: Safe plugin reloads on a host with tryswap
description:
  - Makes an artifact (a plugin executable, optionally with a config file) the active
    generation of a tryswap slot, or brings back an earlier generation from the host's
    artifact store, through the C(tryswap) command on the managed host.
  - tryswap stages the candidate, launches it, validates its go-plugin handshake and probes
    its health before it swaps the active marker; on any failure the candidate is stopped
    and the previous generation keeps serving. This module fails the task with the stage and
    the reason when that happens, so a rolling play with C(max_fail_percentage=0) halts at the
    first host that rejects (or, with a bake window, reverts) the new version.
  - The command runs with C(--json). When a C(tryswap serve) daemon serves the host's state
    directory, tryswap sends the command through the daemon's admin socket itself; otherwise
    it opens the journal directly. The result is the same either way.
  - Idempotent. With O(state=active) nothing is reloaded (C(changed=false)) when the slot's
    active generation already runs the same artifact and config bytes and is alive. With
    O(state=rolled_back_to) nothing is reloaded when the slot already runs what was asked.
  - Check mode is tryswap's dry run C(tryswap try) for O(state=active) (the candidate is
    launched and probed, then discarded; the active generation is untouched), so a check run
    reports a candidate that would be rejected. For O(state=rolled_back_to) check mode only
    compares digests.
version_added: "0.1.0"
author:
  - tryswap contributors
requirements:
  - the C(tryswap) binary on the managed host (a slot configured in its tryswap.toml)
  - O(reason) and O(bake) through a daemon need a tryswap that supports them (see notes)
options:
  slot:
    description: The slot to reload, as named in the host's tryswap.toml.
    type: str
    required: true
  state:
    description:
      - V(active) makes O(artifact) (with O(config_file)) the slot's active generation.
      - V(rolled_back_to) brings back an earlier generation from the host's artifact store
        (C(tryswap rollback)). With O(generation), the slot ends up running that generation's
        artifact and config. Without it, O(artifact) names the version to undo - the slot
        goes back to the generation active before it, and only if it runs O(artifact) (with
        O(config_file)) now; re-running the task then changes nothing.
    type: str
    choices: [active, rolled_back_to]
    default: active
  artifact:
    description:
      - Path on the managed host of the candidate plugin executable (tryswap copies it into
        its content-addressed store).
      - Required with O(state=active); with O(state=rolled_back_to) and no O(generation), the
        version to undo.
    type: path
  config_file:
    description:
      - Path on the managed host of the candidate's config file (substituted for
        C({config}) in the slot's args). Part of the version - the same executable with
        another config file is another version.
    type: path
  generation:
    description:
      - With O(state=rolled_back_to), the generation to bring back (C(tryswap rollback --to)).
        Generation numbers are per host; O(artifact) says the same thing across a fleet.
    type: int
  bake:
    description:
      - A bake window for this reload, for example V(30s) (C(--bake); overrides the slot's
        C(bake)). The previous generation stays up as a warm standby while the candidate
        serves, and the task waits; if the candidate exits or fails its probe during the
        window, tryswap reverts to the standby and this task fails with stage C(baking).
      - Without this option the slot's own C(bake) in tryswap.toml applies, also through a
        daemon.
      - Through a daemon, a per-reload O(bake) needs a tryswap whose admin API accepts it;
        older ones answer that C(--bake) is not supported through the daemon. Set C(bake)
        on the slot instead, or use a newer tryswap.
    type: str
  reason:
    description:
      - Why this change is made (C(--reason), like kubectl's change-cause); tryswap records it
        in the journal with the actor. Passed only when set.
      - Needs a tryswap that records actor and reason; an older one rejects the option and
        the task fails saying so.
    type: str
  force:
    description: Reload even when the artifact and config already run (C(--force)).
    type: bool
    default: false
  config:
    description:
      - The host's tryswap.toml (C(--config)). Default - C(./tryswap.toml) in the module's
        working directory, as the command does; give an absolute path.
    type: path
  state_dir:
    description: The state directory (C(--state-dir)); default - the one the config names.
    type: path
  tryswap:
    description: The C(tryswap) binary on the managed host; default - C(tryswap) on the PATH.
    type: path
attributes:
  check_mode:
    support: full
    details: O(state=active) runs C(tryswap try), a dry run through the probe.
  diff_mode:
    support: none
notes:
  - Reload results are tryswap's C(--json) documents, returned whole as RV(report); their keys
    are a contract of tryswap (C(schema) 1).
  - Exit codes of tryswap - 0 done, 2 rejected (rolled back or reverted), 3 conflict (a reload
    in progress, or the state directory held by another tryswap), 1 error, 64 usage error.
seealso:
  - name: tryswap fleet rollouts
    description: Waves, halting, rollback and the fleet audit (docs/fleet.md).
    link: https://example.invalid/tryswap/docs/fleet.md
"""

EXAMPLES = r"""
- name: Roll the billing plugin forward (no-op when it already runs)
  tryswap.tryswap.reload:
    slot: billing
    artifact: /opt/plugins/billing-2.4.1
    config_file: /etc/billing/plugin.toml
    config: /etc/tryswap/tryswap.toml

- name: With a bake window and a recorded reason (needs a tryswap that supports both)
  tryswap.tryswap.reload:
    slot: billing
    artifact: /opt/plugins/billing-2.4.1
    bake: 2m
    reason: "CHG-1234 billing 2.4.1"
    config: /etc/tryswap/tryswap.toml

- name: Undo 2.4.1 wherever it is active (elsewhere nothing happens)
  tryswap.tryswap.reload:
    slot: billing
    state: rolled_back_to
    artifact: /opt/plugins/billing-2.4.1
    config_file: /etc/billing/plugin.toml
    config: /etc/tryswap/tryswap.toml

- name: Bring back generation 3 from the store
  tryswap.tryswap.reload:
    slot: billing
    state: rolled_back_to
    generation: 3
    config: /etc/tryswap/tryswap.toml
"""

RETURN = r"""
report:
  description:
    - tryswap's whole C(--json) document for the reload - C(reload_id), C(mode), C(outcome),
      C(failed_stage), C(error), C(candidate), C(previous), C(stages), C(bake), ... - or, when
      nothing was reloaded, C({"slot", "outcome" - "already_active", "generation"}).
    - In check mode the C(tryswap try) document (outcome C(dry_run_passed)).
  returned: when tryswap answered with a document
  type: dict
  sample:
    schema: 1
    slot: billing
    mode: activate
    outcome: active
    failed_stage: null
    error: null
    candidate: {generation: 7, sha256: "9f2c...", pid: 4242, address: "127.0.0.1:40001"}
outcome:
  description:
    - C(active), C(dry_run_passed), C(already_active) (nothing to do), C(rolled_back),
      C(reverted), or C(nothing_to_undo) (O(state=rolled_back_to) with O(artifact) not
      active).
  returned: always
  type: str
  sample: active
generation:
  description: The slot's active generation after the task (the candidate's when it became active).
  returned: when known
  type: int
  sample: 7
failed_stage:
  description: Where a rejected candidate failed - C(staged), C(launched), C(validated), C(probed) or C(baking).
  returned: on a rejection or a revert
  type: str
  sample: probed
error:
  description: Why the candidate was rejected, quoting the plugin where possible.
  returned: on a rejection or a revert
  type: str
cmd:
  description: The tryswap command lines run.
  returned: always
  type: list
  elements: list
rc:
  description: The exit code of the last tryswap command.
  returned: when a command ran
  type: int
"""

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

EXIT_REJECTED = 2
EXIT_USAGE = 64


class Tryswap(object):
    """Runs the tryswap binary with --json and the host's config."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.binary = params["tryswap"] or module.get_bin_path("tryswap", required=True)
        self.prefix = [self.binary]
        if params["config"]:
            self.prefix += ["--config", params["config"]]
        if params["state_dir"]:
            self.prefix += ["--state-dir", params["state_dir"]]
        self.prefix.append("--json")
        self.commands = []
        self.rc = None

    def run(self, args):
        """(exit code, JSON document or None, stderr) of `tryswap --json ARGS`."""
        argv = self.prefix + args
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv, environ_update={"NO_COLOR": "1"})
        self.rc = rc
        doc = None
        for line in reversed(out.strip().splitlines()):
            try:
                doc = json.loads(line)
                break
            except ValueError:
                continue
        return rc, doc, err

    def fail(self, message, **extra):
        self.module.fail_json(msg=message, cmd=self.commands, rc=self.rc, **extra)

    def query(self, args):
        """A read command that must succeed: its document."""
        rc, doc, err = self.run(args)
        if rc != 0 or not isinstance(doc, dict):
            self.fail(
                "tryswap %s failed (exit %s): %s"
                % (" ".join(args), rc, error_text(doc, err)),
                report=doc,
            )
        return doc


def error_text(doc, stderr):
    if isinstance(doc, dict) and doc.get("error"):
        return doc["error"]
    return (stderr or "").strip() or "no output"


def file_digest(module, path, what):
    """The lowercase hex sha256 of a file on the host (as tryswap's store names it)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
    except (IOError, OSError) as e:
        module.fail_json(msg="cannot read the %s %s: %s" % (what, path, e))
    return digest.hexdigest()


def slot_status(ts, slot):
    """The slot's entry of `tryswap status SLOT --json`."""
    doc = ts.query(["status", slot])
    for entry in doc.get("slots") or []:
        if entry.get("slot") == slot:
            return entry
    return {"slot": slot, "active": None, "in_flight": None}


def runs(entry, sha256, config_sha256):
    """Whether the slot's active generation is alive and runs exactly these bytes."""
    active = entry.get("active")
    return bool(
        active
        and active.get("alive")
        and not entry.get("in_flight")
        and active.get("sha256") == sha256
        and active.get("config_sha256") == config_sha256
    )


def candidate_digests(module):
    params = module.params
    sha = file_digest(module, params["artifact"], "artifact")
    config = params["config_file"]
    return sha, (file_digest(module, config, "config file") if config else None)


def unchanged(ts, slot, generation, outcome="already_active"):
    report = {"slot": slot, "outcome": outcome, "generation": generation}
    ts.module.exit_json(
        changed=False, report=report, outcome=outcome, generation=generation,
        cmd=ts.commands, rc=ts.rc,
    )


def finish(ts, args, rc, doc, err):
    """Turns a reload command's answer into the task result."""
    module = ts.module
    slot = module.params["slot"]
    if rc == EXIT_USAGE and module.params["reason"] and "--reason" in error_text(doc, err):
        ts.fail(
            "slot %s: %s does not accept --reason: recording a reason needs a tryswap that "
            "records actor and reason; leave `reason` unset or upgrade tryswap"
            % (slot, ts.binary),
            report=doc,
        )
    if not isinstance(doc, dict) or "error" in doc and "outcome" not in doc:
        ts.fail(
            "slot %s: tryswap %s failed (exit %s): %s" % (slot, args[0], rc, error_text(doc, err)),
            report=doc,
        )
    outcome = doc.get("outcome")
    candidate = doc.get("candidate") or {}
    generation = candidate.get("generation", doc.get("generation"))
    if outcome == "already_active":
        unchanged(ts, slot, doc.get("generation"))
    if outcome in ("active", "dry_run_passed") and rc == 0:
        module.exit_json(
            changed=True, report=doc, outcome=outcome, generation=generation,
            cmd=ts.commands, rc=rc,
        )
    stage = doc.get("failed_stage")
    reason = doc.get("error") or "no reason given"
    if outcome == "reverted":
        what = "reverted during the bake (stage %s)" % (stage or "baking")
    elif args[0] == "try":
        what = "would be rejected (dry run) at stage %s" % stage
    else:
        what = "rejected at stage %s; the previous generation keeps serving" % stage
    ts.fail(
        "slot %s: %s %s: %s" % (slot, doc.get("mode", args[0]), what, reason),
        report=doc, outcome=outcome, failed_stage=stage, error=doc.get("error"),
        generation=generation,
    )


def reload_options(params):
    extra = []
    if params["bake"] is not None:
        extra += ["--bake", params["bake"]]
    if params["reason"] is not None:
        extra += ["--reason", params["reason"]]
    return extra


def activate(ts):
    module = ts.module
    params = module.params
    slot = params["slot"]
    artifact = os.path.abspath(params["artifact"])
    config_file = params["config_file"] and os.path.abspath(params["config_file"])
    if module.check_mode:
        if not params["force"]:
            sha, config_sha = candidate_digests(module)
            entry = slot_status(ts, slot)
            if runs(entry, sha, config_sha):
                unchanged(ts, slot, entry["active"]["generation"])
        args = ["try", slot, artifact]
        if config_file:
            args += ["--config-file", config_file]
        rc, doc, err = ts.run(args)
        finish(ts, args, rc, doc, err)
    args = ["activate", slot, artifact]
    if config_file:
        args += ["--config-file", config_file]
    if params["force"]:
        args.append("--force")
    args += reload_options(params)
    rc, doc, err = ts.run(args)
    finish(ts, args, rc, doc, err)


def rolled_back_to(ts):
    module = ts.module
    params = module.params
    slot = params["slot"]
    entry = slot_status(ts, slot)
    args = ["rollback", slot]
    if params["generation"] is not None:
        target = params["generation"]
        history = ts.query(["history", slot])
        known = [
            r.get("candidate") for r in history.get("reloads") or []
            if (r.get("candidate") or {}).get("generation") == target
        ]
        if known and not params["force"]:
            wanted = known[-1]
            if runs(entry, wanted.get("sha256"), wanted.get("config_sha256")):
                unchanged(ts, slot, entry["active"]["generation"])
        args += ["--to", str(target)]
    else:
        sha, config_sha = candidate_digests(module)
        if not runs(entry, sha, config_sha) and not params["force"]:
            active = entry.get("active") or {}
            unchanged(ts, slot, active.get("generation"), outcome="nothing_to_undo")
    if module.check_mode:
        module.exit_json(
            changed=True, report=None, outcome="would_roll_back", cmd=ts.commands, rc=ts.rc,
        )
    args += reload_options(params)
    rc, doc, err = ts.run(args)
    finish(ts, args, rc, doc, err)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            slot=dict(type="str", required=True),
            state=dict(type="str", default="active", choices=["active", "rolled_back_to"]),
            artifact=dict(type="path"),
            config_file=dict(type="path"),
            generation=dict(type="int"),
            bake=dict(type="str"),
            reason=dict(type="str"),
            force=dict(type="bool", default=False),
            config=dict(type="path"),
            state_dir=dict(type="path"),
            tryswap=dict(type="path"),
        ),
        required_if=[
            ("state", "active", ("artifact",)),
            ("state", "rolled_back_to", ("generation", "artifact"), True),
        ],
        mutually_exclusive=[("generation", "artifact")],
        supports_check_mode=True,
    )
    params = module.params
    if params["generation"] is not None and params["state"] != "rolled_back_to":
        module.fail_json(msg="generation is only for state=rolled_back_to")
    if params["config_file"] and not params["artifact"]:
        module.fail_json(msg="config_file goes with artifact")
    if params["bake"] is not None and (not params["bake"].strip() or " " in params["bake"].strip()):
        module.fail_json(msg="bake %r is not a duration; write e.g. 500ms, 30s or 2m" % params["bake"])
    ts = Tryswap(module)
    if params["state"] == "active":
        activate(ts)
    else:
        rolled_back_to(ts)


if __name__ == "__main__":
    main()
