"""`sam build` compiles every function into the workspace's one target directory, not once per function.

SAM's Rust workflow (aws-lambda-builders, which the pinned aws-sam-cli of infra/requirements.txt pins in
turn) runs `cargo lambda build` in each function's `CodeUri`, which here is a member of one Cargo
workspace. A builder that let each of those builds pick its own target directory compiled the whole
dependency tree once per function, into `crates/<function>/target`. This drives the pinned builder's own
code (its cargo metadata call and the environment it gives cargo lambda, with the build itself replaced by
a recorder) for every function in template.yaml: each must build into the workspace's target directory,
and the copy step must look for that function's own binary there.

Run by the test command: python -m unittest infra/test_sam_build.py (from the repository root).
"""

import io
import json
import os
import shutil
import subprocess
import unittest

from aws_lambda_builders.workflows.rust_cargo.cargo_lambda import SubprocessCargoLambda
from aws_lambda_builders.workflows.rust_cargo.utils import OSUtils
from samtranslator.yaml_helper import yaml_parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARGO = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")


def functions():
    """(logical id, CodeUri) of every function template.yaml builds with cargo lambda."""
    with open(os.path.join(ROOT, "template.yaml")) as f:
        template = yaml_parse(f.read())
    return [
        (name, resource["Properties"]["CodeUri"])
        for name, resource in template["Resources"].items()
        if resource.get("Type") == "AWS::Serverless::Function"
        and resource.get("Metadata", {}).get("BuildMethod") == "rust-cargolambda"
    ]


class FinishedBuild:
    """What the recorder hands back instead of a cargo lambda process: a build that succeeded at once."""

    stdout = []
    stderr = io.BytesIO()

    def wait(self):
        return 0


class RecordingOS(OSUtils):
    """Runs `cargo metadata` for real and records every other command instead of running it."""

    def __init__(self):
        self.builds = []

    def popen(self, command, stdout=None, stderr=None, env=None, cwd=None):
        if command[1:2] == ["metadata"]:
            return super().popen(command, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
        self.builds.append({"command": command, "cwd": cwd, "env": env})
        return FinishedBuild()


class SamBuildSharesOneTargetDirectory(unittest.TestCase):
    def test_every_function_builds_into_the_workspace_target_directory(self):
        workspace = json.loads(
            subprocess.check_output([CARGO, "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT)
        )
        recorder = RecordingOS()
        cargo_lambda = SubprocessCargoLambda(which=lambda name, executable_search_paths=None: [name], osutils=recorder)
        built = functions()
        self.assertGreaterEqual(len(built), 4, "template.yaml has the four functions")
        for logical_id, code_uri in built:
            source_dir = os.path.join(ROOT, code_uri)
            cargo_lambda.run(command=[CARGO, "lambda", "build", "--release", "--arm64"], cwd=source_dir)
            build = recorder.builds[-1]
            self.assertEqual(
                build["env"].get("CARGO_TARGET_DIR"),
                workspace["target_directory"],
                f"{logical_id} builds into {build['env'].get('CARGO_TARGET_DIR')!r}, not the workspace's target",
            )
            layout = cargo_lambda.resolve_workspace_layout(CARGO, source_dir)
            self.assertEqual(layout["binary_name"], os.path.basename(code_uri), f"{logical_id}'s binary")


if __name__ == "__main__":
    unittest.main()
