"""Files shipped verbatim in hand-off bundles: standard library, numpy and the device's runtime only.
Each imports its siblings by package path here and by file name inside a bundle."""
