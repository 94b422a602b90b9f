"""``cloome push``: a CLOOME model (+ processor + model card) and its embeddings (+ dataset card) to the Hub.

    cloome push --model runs/demo --embeddings embeddings/ --results eval/results.json \
        --repo_id me/cloome-demo                    # model -> me/cloome-demo, embeddings -> me/cloome-demo-embeddings
    cloome push ... --local_dir publish/            # write publish/model and publish/dataset instead

``--model`` (old spelling ``--model_dir``): a folder with a saved CloomeModel and CloomeProcessor. ``--embeddings``: an output folder of
``cloome embed``. Either or both. ``--results``: an evaluation ``results.json`` whose metrics become the
model card's ``model-index``. The ``--local_dir`` folders are exactly what is committed, and
``CloomeModel.from_pretrained(local_dir + "/model")`` / ``load_dataset(local_dir + "/dataset", "images")``
read them back.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .arguments import ModelSourceArguments, arg, command_error, parse_command


@dataclass
class PushArguments:
    _argument_group_name = "push"

    embeddings: str | None = arg(None, "'cloome embed' output folder")
    repo_id: str | None = arg(None, "model repo id (namespace/name)")
    dataset_repo_id: str | None = arg(None, "embeddings dataset repo id (default: REPO_ID-embeddings)")
    results: str | None = arg(None, "evaluation results.json for the model card's model-index")
    eval_dataset_name: str = arg("Cell Painting (Bray et al. 2017)", "dataset name of the model-index")
    eval_dataset_type: str = arg("cell-painting", "dataset type of the model-index")
    eval_split: str = arg("test", "dataset split of the model-index")
    description: str | None = arg(None, "free text for the cards")
    source_dataset: str | None = arg(None, "name of the imaged dataset (dataset card)")
    private: bool = arg(False, "create private repos")
    token: str | None = arg(None, "Hub token (default: the logged-in token)")
    local_dir: str | None = arg(None, "write LOCAL_DIR/model and LOCAL_DIR/dataset, push nothing")


ARGUMENTS = (ModelSourceArguments, PushArguments)


def main(argv=None) -> dict:
    args = parse_command("push", ARGUMENTS, argv, required=("repo_id",), description=__doc__)
    if args.model is None and args.embeddings is None:
        command_error("push", "give --model and/or --embeddings")
    from ..publish import hub

    dataset_repo_id = args.dataset_repo_id or f"{args.repo_id}-embeddings"
    card = dict(model_revision=args.revision, results=args.results, eval_dataset_name=args.eval_dataset_name,
                eval_dataset_type=args.eval_dataset_type, eval_split=args.eval_split, description=args.description,
                datasets=[dataset_repo_id] if args.embeddings else None)
    done = {}
    if args.local_dir is not None:
        if args.model:
            done["model"] = hub.write_model_repo(args.model, os.path.join(args.local_dir, "model"),
                                                 model_id=args.repo_id, **card)
        if args.embeddings:
            done["dataset"] = hub.write_dataset_repo(args.embeddings, os.path.join(args.local_dir, "dataset"),
                                                     dataset_id=dataset_repo_id, source_dataset=args.source_dataset,
                                                     description=args.description)
        for part, files in done.items():
            folder = os.path.join(args.local_dir, part)
            print(f"wrote the {part} repo ({len(files)} files) to {folder}: {', '.join(files)}", file=sys.stderr)
        return done
    if args.model:
        done["model"] = hub.push_model(args.model, args.repo_id, private=args.private, token=args.token, **card)
        print(f"pushed the model ({args.model}) to https://huggingface.co/{args.repo_id} "
              f"(commit {getattr(done['model'], 'oid', '?')})", file=sys.stderr)
    if args.embeddings:
        done["dataset"] = hub.push_embeddings(args.embeddings, dataset_repo_id, private=args.private,
                                              token=args.token, source_dataset=args.source_dataset,
                                              description=args.description)
        pictures = done["dataset"]["thumbnails"]
        print(f"pushed the embeddings ({args.embeddings}) to https://huggingface.co/datasets/{dataset_repo_id}"
              + (f", with {pictures:,} site thumbnails" if pictures else ", without site thumbnails (the store has none)"),
              file=sys.stderr)
    return done

