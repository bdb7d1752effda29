"""`r1ray submit` and `r1ray k8s render`: running a config on an existing Ray cluster or on Kubernetes."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

EXIT_JOB_FAILED = 1
EXIT_INTERRUPTED = 130


def _submit_cmd(args: argparse.Namespace) -> int:
    from r1ray.controller import submit as sub

    job = sub.build_job(args.config, args.overrides, working_dir=args.working_dir, excludes=args.exclude,
                        forward_env=args.forward_env, submission_id=args.submission_id)
    if not args.no_validate:
        sub.validate_in_working_dir(job, args.overrides)
    address = sub.resolve_address(args.address, os.environ)
    print(f"job for {address}:\n{json.dumps(job.describe(), indent=2)}")
    warning = sub.cleartext_warning(address)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        return 0
    submission_id = sub.submit(job, address)
    follow_cmd = f"ray job logs -f {submission_id} --address {shlex.quote(address)}"
    print(f"submitted: {submission_id}\nfollow the logs: {follow_cmd}\n"
          f"status / stop:   ray job status {submission_id} / ray job stop {submission_id}", flush=True)
    if not args.wait:
        return 0
    try:
        status = sub.follow(address, submission_id, sys.stdout)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop {submission_id} ends it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"job {submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else EXIT_JOB_FAILED


def _k8s_cmd(args: argparse.Namespace) -> int:
    from r1ray.controller.k8s import RenderOptions, render

    opts = RenderOptions(kind=args.kind, name=args.name, image=args.image, gpus_per_node=args.gpus_per_node,
                         memory_per_gpu_gi=args.memory_per_gpu, claim=args.claim, secret=args.secret,
                         backoff_limit=args.backoff_limit)
    rendered = render(args.config, args.overrides, opts)
    text = rendered.to_yaml(_render_command(args))
    for note in rendered.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.kind} for {args.config} to {args.out} (kubectl apply -f {args.out})")
    else:
        sys.stdout.write(text)
    return 0


def _render_command(args: argparse.Namespace) -> str:
    """The command line that reproduces a render, for the file's header (options at their defaults left out)."""
    from r1ray.controller.k8s import RenderOptions

    default = RenderOptions()
    words = ["r1ray", "k8s", "render", "--config", args.config, *args.overrides]
    for flag, value, usual in (("--kind", args.kind, default.kind), ("--name", args.name, default.name),
                               ("--image", args.image, default.image),
                               ("--gpus-per-node", args.gpus_per_node, default.gpus_per_node),
                               ("--memory-per-gpu", args.memory_per_gpu, default.memory_per_gpu_gi),
                               ("--claim", args.claim, default.claim), ("--secret", args.secret, default.secret),
                               ("--backoff-limit", args.backoff_limit, default.backoff_limit)):
        if value != usual:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def add_deploy_commands(sub: argparse._SubParsersAction, add_config_args: Callable) -> None:
    from r1ray.controller.k8s import RenderOptions
    from r1ray.controller.submit import DEFAULT_EXCLUDES, FORWARDED_ENV

    p = sub.add_parser("submit", help="run a config as a Ray job on an existing cluster (like `ray job submit`)")
    add_config_args(p, required=True)
    p.add_argument("--address", help="Ray job API, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, "
                                     "RAY_ADDRESS, then http://127.0.0.1:8265)")
    p.add_argument("--working-dir", help="folder uploaded as the job's working directory (default: the config's)")
    p.add_argument("--exclude", action="append", default=[],
                   help=f"extra upload exclude pattern; always excluded: {' '.join(DEFAULT_EXCLUDES)}")
    p.add_argument("--forward-env", action="append", default=[], metavar="NAME",
                   help=f"also pass this environment variable to the job (always, when set: {' '.join(FORWARDED_ENV)}); "
                        f"values are read from the environment, never given here")
    p.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    p.add_argument("--wait", action="store_true", help="follow the logs to the end; exit 0 only if the job succeeded")
    p.add_argument("--dry-run", action="store_true", help="print the job without submitting it")
    p.add_argument("--no-validate", action="store_true",
                   help="skip loading the config here (for paths that exist only on the cluster)")
    p.set_defaults(func=_submit_cmd)

    p = sub.add_parser("k8s", help="Kubernetes (KubeRay) manifests")
    ksub = p.add_subparsers(dest="action", required=True)
    r = ksub.add_parser("render", help="write a RayJob (or RayCluster) whose worker groups match the placement")
    add_config_args(r, required=True)
    d = RenderOptions()
    r.add_argument("--kind", default=d.kind, choices=["rayjob", "raycluster"])
    r.add_argument("--name", default=d.name, help="resource name (default: r1ray-<config file name>)")
    r.add_argument("--image", default=d.image, help="image of every Ray pod (deploy/docker/Dockerfile)")
    r.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node,
                   help="GPUs per pod of GPU pools (default: the pool's devices_per_node)")
    r.add_argument("--memory-per-gpu", type=int, default=d.memory_per_gpu_gi, help="GiB of memory per GPU of a GPU pod")
    r.add_argument("--claim", default=d.claim, help="shared ReadWriteMany PersistentVolumeClaim")
    r.add_argument("--secret", default=d.secret, help="Secret with optional WANDB_API_KEY and HF_TOKEN")
    r.add_argument("--backoff-limit", type=int, default=d.backoff_limit,
                   help="RayJob retries (each resumes from the last checkpoint)")
    r.add_argument("--out", help="write to this file instead of stdout")
    r.set_defaults(func=_k8s_cmd)
