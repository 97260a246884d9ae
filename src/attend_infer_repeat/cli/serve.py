"""``air serve``: the web page for drawing and uploading images."""
from __future__ import annotations

from .options import port, positive_int


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="a local web page to play with a model: draw and decompose, attention explorer, samples",
        description="Start a local web app for a trained model and print its URL. Decompose: draw digits with the "
        "mouse, upload an image or pick a random held-out scene, and see the count, each step's window, crop "
        "and reconstruction. Transform explorer: scale/shift sliders, the window cropped and placed back by the "
        "model's own spatial transformer. Generate: scenes sampled from the prior. Writes nothing to disk. "
        "Ctrl-C stops it.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run directory (its best.pt) or a .pt file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to "
                   "the network)")
    p.add_argument("--port", type=port, default=8000,
                   help="port to listen on; 0 picks a free one (default: 8000)")
    p.add_argument("--scenes", default=None, metavar="SCENES.npz",
                   help="scene file ('air data') for 'random test scene' (default: 500 scenes built in memory "
                   "from the MNIST test digits, if MNIST is available without a download)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (a DNS or proxy name; '*.example.org' for "
                   "its sub-domains, '*' for any; repeatable). Loopback names, the --host address and, on 0.0.0.0, "
                   "IP addresses and this machine's name are always answered; others get 421, which stops DNS "
                   "rebinding")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ..serve import serve

    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    server = serve(args.checkpoint, host=args.host, port=args.port, scenes=args.scenes, device=args.device,
                   allowed_hosts=args.allow_host)  # warns itself when it listens beyond this machine
    print(f"air serve: {server.url}  (Ctrl-C stops it)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shuts down cleanly on Ctrl-C, then passes the signal on
        pass
    print("air serve: stopped", flush=True)
    return 0
