#!/bin/sh
# Writes a small CIFAR-10 binary data set into directory $1 for the resnet
# example's end-to-end test: data_batch_1.bin ... data_batch_5.bin and
# test_batch.bin of $2 records each (default 20). Record i has label i % 10
# and an image whose first 1536 bytes are random and whose other 1536 are
# the grey level 25 * label, so the classes can be learned.
set -eu
dir=$1
records=${2:-20}
mkdir -p "$dir"
write_batch() {
  file=$1
  : > "$file"
  i=0
  while [ "$i" -lt "$records" ]; do
    label=$((i % 10))
    octal=$(printf '%03o' $((25 * label)))
    printf "\\$(printf '%03o' "$label")" >> "$file"
    head -c 1536 /dev/urandom >> "$file"
    head -c 1536 /dev/zero | tr '\000' "\\$octal" >> "$file"
    i=$((i + 1))
  done
}
for b in 1 2 3 4 5; do write_batch "$dir/data_batch_$b.bin"; done
write_batch "$dir/test_batch.bin"
