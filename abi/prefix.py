#!/usr/bin/env python3
"""prefix.py OLD NEW OUT: NEW's ABI (abidw XML) with every struct cut back to
its size in OLD, written to OUT.

A change is an addition a minor version may make when each struct of OLD is
a prefix of its NEW self: the same members at the same offsets with the same
types, new members only after them. Then OUT describes exactly the ABI of
OLD, and `abidiff OLD OUT` reports nothing; a reordered, retyped, removed or
resized member, or a shrunk struct, still shows (abi/check.sh --update).
"""
import sys
import xml.etree.ElementTree as ET


def struct_sizes(root):
    """Name -> size in bits of every complete struct in a corpus."""
    return {
        decl.get("name"): int(decl.get("size-in-bits"))
        for decl in root.iter("class-decl")
        if decl.get("size-in-bits") and decl.get("is-declaration-only") != "yes"
    }


def main(old_path, new_path, out_path):
    old_sizes = struct_sizes(ET.parse(old_path).getroot())
    tree = ET.parse(new_path)
    for decl in tree.getroot().iter("class-decl"):
        old_size = old_sizes.get(decl.get("name"))
        new_size = decl.get("size-in-bits")
        # A struct new in NEW, or one that shrank, is left for abidiff to report.
        if old_size is None or new_size is None or int(new_size) < old_size:
            continue
        for member in list(decl.findall("data-member")):
            if int(member.get("layout-offset-in-bits", "0")) >= old_size:
                decl.remove(member)
        decl.set("size-in-bits", str(old_size))
    # No XML declaration: abidiff tells the file's type from its first line.
    tree.write(out_path, encoding="unicode", xml_declaration=False)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
