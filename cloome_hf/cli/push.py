"""``cloome push``: a CLOOME model (+ processor + model card) and its embeddings (+ dataset card) to the Hub.

    cloome push --model_dir runs/demo --embeddings embeddings/ --results eval/results.json \
        --repo_id me/cloome-demo                    # model -> me/cloome-demo, embeddings -> me/cloome-demo-embeddings
    cloome push ... --local_dir publish/            # write publish/model and publish/dataset instead

``--model_dir``: a folder with a saved CloomeModel and CloomeProcessor. ``--embeddings``: an output folder of
``cloome embed``. Either or both. ``--results``: an evaluation ``results.json`` whose metrics become the
model card's ``model-index``. The ``--local_dir`` folders are exactly what is committed, and
``CloomeModel.from_pretrained(local_dir + "/model")`` / ``load_dataset(local_dir + "/dataset", "images")``
read them back.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=None, help="saved model + processor folder")
    p.add_argument("--embeddings", default=None, help="'cloome embed' output folder")
    p.add_argument("--repo_id", required=True, help="model repo id (namespace/name)")
    p.add_argument("--dataset_repo_id", default=None, help="embeddings dataset repo id (default: REPO_ID-embeddings)")
    p.add_argument("--results", default=None, help="evaluation results.json for the model card's model-index")
    p.add_argument("--eval_dataset_name", default="Cell Painting (Bray et al. 2017)")
    p.add_argument("--eval_dataset_type", default="cell-painting")
    p.add_argument("--eval_split", default="test")
    p.add_argument("--description", default=None, help="free text for the cards")
    p.add_argument("--source_dataset", default=None, help="name of the imaged dataset (dataset card)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in token)")
    p.add_argument("--local_dir", default=None, help="write LOCAL_DIR/model and LOCAL_DIR/dataset, push nothing")
    return p


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_dir is None and args.embeddings is None:
        parser.error("give --model_dir and/or --embeddings")
    from ..publish import hub

    dataset_repo_id = args.dataset_repo_id or f"{args.repo_id}-embeddings"
    card = dict(results=args.results, eval_dataset_name=args.eval_dataset_name,
                eval_dataset_type=args.eval_dataset_type, eval_split=args.eval_split, description=args.description,
                datasets=[dataset_repo_id] if args.embeddings else None)
    done = {}
    if args.local_dir is not None:
        if args.model_dir:
            done["model"] = hub.write_model_repo(args.model_dir, os.path.join(args.local_dir, "model"),
                                                 model_id=args.repo_id, **card)
        if args.embeddings:
            done["dataset"] = hub.write_dataset_repo(args.embeddings, os.path.join(args.local_dir, "dataset"),
                                                     dataset_id=dataset_repo_id, source_dataset=args.source_dataset,
                                                     description=args.description)
        for part, files in done.items():
            folder = os.path.join(args.local_dir, part)
            print(f"wrote the {part} repo ({len(files)} files) to {folder}: {', '.join(files)}", file=sys.stderr)
        return done
    if args.model_dir:
        done["model"] = hub.push_model(args.model_dir, args.repo_id, private=args.private, token=args.token, **card)
        print(f"pushed the model ({args.model_dir}) to https://huggingface.co/{args.repo_id} "
              f"(commit {getattr(done['model'], 'oid', '?')})", file=sys.stderr)
    if args.embeddings:
        done["dataset"] = hub.push_embeddings(args.embeddings, dataset_repo_id, private=args.private,
                                              token=args.token, source_dataset=args.source_dataset,
                                              description=args.description)
        print(f"pushed the embeddings ({args.embeddings}) to https://huggingface.co/datasets/{dataset_repo_id}",
              file=sys.stderr)
    return done

