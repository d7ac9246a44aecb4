"""Serve predict.py's OME-Zarr outputs over HTTP for neuroglancer, and print the link that shows them.

    python -m lib.run.serve OUT.zarr [MORE.zarr ...] [--port 8000] [--image RAW.zarr]

A static file server of the outputs' folder with the CORS header that a web viewer needs (neuroglancer's page,
on another origin, reads the chunks from this machine). The link opens neuroglancer with the probabilities as an
image layer and each label image (the mask, the objects) as a segmentation layer, read through their OME-Zarr
0.5 metadata (``zarr3://``), so that neuroglancer picks the level of the pyramid that fits the screen.
``--image`` adds the raw data (an OME-Zarr image in the same folder) under them. Stop it with Ctrl-C.
"""

import argparse
import functools
import http.server
import json
import os
import sys
import urllib.parse

from ..errors import UserError

NEUROGLANCER = "https://neuroglancer-demo.appspot.com/"


class CorsHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Access-Control-Allow-Origin: *``; quiet (no line per request)."""

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, *args):
        pass


def server(folder, port=8000, host="127.0.0.1"):
    """A threading HTTP server of ``folder`` (not started: call ``serve_forever``); ``port`` 0 takes a free one."""
    handler = functools.partial(CorsHandler, directory=folder)
    return http.server.ThreadingHTTPServer((host, port), handler)


def viewer_link(base_url, outputs, image=None):
    """The neuroglancer link showing each output (its probabilities, mask and objects) under ``image``."""
    import zarr

    layers, ndim = [], None
    if image:
        layers.append({"type": "image", "source": f"zarr3://{base_url}/{image}/", "name": os.path.basename(image)})
    for output in outputs:
        name = os.path.basename(output.rstrip("/"))
        layers.append({"type": "image", "source": f"zarr3://{base_url}/{name}/", "name": f"{name} probability",
                       "opacity": 0.5, "shader": "#uicontrol invlerp normalized\nvoid main() {\n"
                       "  emitRGB(vec3(normalized(), 0.0, 0.0));\n}\n"})
        root = zarr.open_group(output, mode="r")
        ndim = ndim or root["labels/mask/0"].ndim
        for label in dict(root["labels"].attrs)["ome"]["labels"]:
            layers.append({"type": "segmentation", "source": f"zarr3://{base_url}/{name}/labels/{label}/",
                           "name": f"{name} {label}"})
    state = {"layers": layers, "layout": "4panel" if ndim == 3 else "xy"}
    return NEUROGLANCER + "#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lib.run.serve", description=__doc__.splitlines()[0])
    parser.add_argument("outputs", nargs="+", metavar="OUT.zarr", help="predict.py outputs, in one folder")
    parser.add_argument("--port", type=int, default=8000, help="port of the server (default 8000)")
    parser.add_argument("--image", help="an OME-Zarr image in the same folder, shown under the outputs")
    args = parser.parse_args(argv)
    from ..predict import writers
    from . import cli

    with cli.user_errors():
        outputs = [os.path.abspath(o.rstrip("/")) for o in args.outputs]
        for output in outputs:
            if writers.output_kind(output) != "zarr" or writers.read_job(output) is None:
                raise UserError(f"OUT.zarr {output}: not an OME-Zarr output of predict.py")
        folder = os.path.dirname(outputs[0])
        if any(os.path.dirname(o) != folder for o in outputs):
            raise UserError("OUT.zarr: the outputs must lie in one folder (it is the server's root)")
        if args.image and not os.path.isdir(os.path.join(folder, args.image)):
            raise UserError(f"--image {args.image}: not found in {folder}")
        try:
            httpd = server(folder, args.port)
        except OSError as exc:
            raise UserError(f"--port {args.port}: cannot serve on it ({exc.strerror}); choose another") from None
        base = f"http://{httpd.server_address[0]}:{httpd.server_address[1]}"
        print(f"Serving {folder} at {base}; open in a browser on this machine:")
        print(viewer_link(base, outputs, args.image))
        sys.stdout.flush()
        try:
            httpd.serve_forever()
        finally:
            httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())
