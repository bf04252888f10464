#include "../src/io/state_dict.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../src/io/pickle.h"
#include "../src/io/zip_check.h"
#include "support/test_support.h"
#include "trainloop/checkpoint.h"
#include "trainloop/error.h"

namespace trainloop::io {
namespace {

using json = nlohmann::json;
using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::read_text;

std::string pickled(const c10::Dict<std::string, torch::Tensor>& dict) {
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  return std::string(bytes.begin(), bytes.end());
}

// Python's name of a dtype, e.g. "float32".
std::string python_dtype(torch::ScalarType type) {
  static const std::map<torch::ScalarType, std::string> names = {
      {torch::kFloat, "float32"}, {torch::kDouble, "float64"}, {torch::kHalf, "float16"},
      {torch::kBFloat16, "bfloat16"}, {torch::kLong, "int64"}, {torch::kInt, "int32"},
      {torch::kShort, "int16"}, {torch::kChar, "int8"}, {torch::kByte, "uint8"},
      {torch::kBool, "bool"}, {torch::kComplexFloat, "complex64"},
      {torch::kComplexDouble, "complex128"}};
  const auto found = names.find(type);
  return found == names.end() ? c10::toString(type) : found->second;
}

std::map<std::string, StateEntry> by_name(const std::vector<StateEntry>& entries) {
  std::map<std::string, StateEntry> out;
  for (const auto& entry : entries) out[entry.name] = entry;
  return out;
}

TEST(StateDictTest, WhatPickleSaveWritesReadsBack) {
  c10::Dict<std::string, torch::Tensor> dict;
  const torch::Tensor base = torch::arange(24, torch::kFloat).reshape({4, 6});
  dict.insert("float", torch::randn({3, 2}));
  dict.insert("double", torch::randn({5}, torch::kDouble));
  dict.insert("long", torch::tensor(std::vector<int64_t>{-7, 0, int64_t{1} << 40}));
  dict.insert("bool", torch::tensor({true, false, true}));
  dict.insert("half", torch::randn({2}).to(torch::kHalf));
  dict.insert("scalar", torch::tensor(1.5));
  dict.insert("column", base.select(1, 2));  // a strided view
  const std::vector<StateEntry> entries = read_state_dict(pickled(dict));
  ASSERT_EQ(entries.size(), dict.size());
  for (const auto& entry : entries) {
    EXPECT_EQ(entry.problem, "") << entry.name;
    const torch::Tensor expected = dict.at(entry.name);
    EXPECT_EQ(entry.tensor.scalar_type(), expected.scalar_type()) << entry.name;
    EXPECT_TRUE(torch::equal(entry.tensor, expected)) << entry.name;
  }
}

// Files Python's torch.save wrote (tests/python/write_state_dicts.py), each
// against the values Python read back from it.
TEST(StateDictTest, WhatPythonWritesReadsAsPythonReadsIt) {
  const testing_support::TempDir scratch;
  const auto written = testing_support::run_command(fmt::format(
      "'{}' '{}/tests/python/write_state_dicts.py' '{}' 2>&1", TRAINLOOP_PYTHON,
      TRAINLOOP_SOURCE_DIR, scratch.path.string()));
  ASSERT_EQ(written.status, 0) << written.output;
  for (const char* name : {"module_state_dict", "one_entry", "parameters", "views", "dtypes"}) {
    SCOPED_TRACE(name);
    const json expected = json::parse(read_text(scratch.path / (std::string(name) + ".json")));
    const auto entries =
        by_name(read_state_dict(read_text(scratch.path / (std::string(name) + ".pt"))));
    ASSERT_EQ(entries.size(), expected.size());
    for (const auto& [entry, value] : expected.items()) {
      SCOPED_TRACE(entry);
      ASSERT_EQ(entries.count(entry), 1u);
      const StateEntry& read = entries.at(entry);
      ASSERT_EQ(read.problem, "");
      EXPECT_EQ(read.tensor.sizes().vec(), value["shape"].get<std::vector<int64_t>>());
      EXPECT_EQ(python_dtype(read.tensor.scalar_type()), value["dtype"].get<std::string>());
      const torch::Tensor values = read.tensor.to(torch::kDouble).flatten().contiguous();
      const auto expected_values = value["values"].get<std::vector<double>>();
      ASSERT_EQ(values.numel(), static_cast<int64_t>(expected_values.size()));
      for (size_t i = 0; i < expected_values.size(); ++i) {
        EXPECT_EQ(values[static_cast<int64_t>(i)].item<double>(), expected_values[i])
            << "element " << i;
      }
    }
  }
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "calls_system.pt")); },
              ThrowsMessage<Error>(HasSubstr("calls posix.system at byte")));
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "a_list.pt")); },
              ThrowsMessage<Error>(
                  HasSubstr("holds a value of another type, expected a dict of tensors")));
  EXPECT_THAT([&] { read_state_dict(read_text(scratch.path / "integer_keys.pt")); },
              ThrowsMessage<Error>(HasSubstr("holds a dict whose keys are not all strings")));
  const auto mixed = by_name(read_state_dict(read_text(scratch.path / "an_integer.pt")));
  EXPECT_EQ(mixed.at("weight").problem, "");
  EXPECT_EQ(mixed.at("epoch").problem, "is an int, expected a tensor");
  // torch.save(..., _use_new_zipfile_serialization=False): named, with the
  // way out, rather than "no end-of-central-directory record".
  const std::string legacy = (scratch.path / "legacy_format.pt").string();
  EXPECT_THAT([&] { load_tensors(legacy); },
              ThrowsMessage<Error>(HasSubstr(
                  legacy + ": not a dict of tensors that torch can read: PyTorch's legacy format "
                           "(torch.save before PyTorch 1.6, or _use_new_zipfile_serialization="
                           "False), not a zip archive: load it in Python and save it again with "
                           "torch.save's default format")));
}

TEST(StateDictTest, LoadTensorsRefusesAFifoWithoutBlocking) {
  const testing_support::TempDir scratch;
  const std::filesystem::path fifo = scratch.path / "weights.pt";
  testing_support::make_fifo(fifo);
  EXPECT_EQ(testing_support::error_reading_fifo(fifo, [&] { load_tensors(fifo.string()); }),
            fifo.string() + ": not a regular file (a FIFO)");
}

// fuzz/corpus/weights/python_state_dict.pt with the weight's shape made
// [0, 3] and its offset 255: LibTorch's as_strided threw from inside when
// given the empty view (fuzz/weights_fuzzer); it reads nothing, so it is fine.
TEST(StateDictTest, AnEmptyViewAnywhereIsEmpty) {
  const auto entries = by_name(read_state_dict(
      read_text(TRAINLOOP_SOURCE_DIR "/tests/data/weights_empty_view_past_storage.pt")));
  EXPECT_EQ(entries.at("weight").problem, "");
  EXPECT_EQ(entries.at("weight").tensor.sizes().vec(), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(torch::equal(entries.at("bias").tensor, torch::ones({2})));
}

TEST(StateDictTest, QuantizedAndSparseTensorsAreNamedNotRead) {
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("quantized", torch::quantize_per_tensor(torch::randn({2, 4}), 0.1, 0, torch::kQInt8));
  dict.insert("sparse", torch::zeros({2}).to_sparse());
  const auto entries = by_name(read_state_dict(pickled(dict)));
  EXPECT_EQ(entries.at("quantized").problem, "is a quantized QInt8 tensor, expected a dense one");
  EXPECT_EQ(entries.at("sparse").problem, "is a sparse tensor, expected a dense one");
}

// Every kind of tensor a state dict holds, for state_dict_bytes: each dtype
// with a storage class, a 0-dim one, an empty one, views (a transpose, a
// slice off a larger storage, two views of one storage), a parameter that
// requires grad, and shapes and strides past one and two bytes.
std::vector<std::pair<std::string, torch::Tensor>> every_kind_of_tensor() {
  torch::manual_seed(3);
  const torch::Tensor base = torch::arange(40, torch::kFloat);
  return {
      {"float", torch::randn({3, 2})},
      {"double", torch::randn({4}, torch::kDouble)},
      {"half", torch::randn({2, 2}).to(torch::kHalf)},
      {"bfloat16", torch::randn({3}).to(torch::kBFloat16)},
      {"int64", torch::tensor(std::vector<int64_t>{-7, 0, int64_t{1} << 40})},
      {"num_batches_tracked", torch::tensor(int64_t{12})},
      {"int32", torch::tensor(std::vector<int32_t>{-3, 1 << 30})},
      {"int16", torch::tensor(std::vector<int16_t>{-300, 7})},
      {"int8", torch::tensor(std::vector<int8_t>{-128, 127})},
      {"uint8", torch::tensor(std::vector<uint8_t>{0, 255})},
      {"bool", torch::tensor({true, false, true})},
      {"complex64", torch::randn({2}, torch::kComplexFloat)},
      {"complex128", torch::randn({2}, torch::kComplexDouble)},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::zeros({0, 4})},
      {"transposed", torch::randn({3, 5}).t()},
      {"slice", base.slice(0, 10, 16).view({2, 3})},
      {"same_storage", base.slice(0, 12, 20)},
      {"expanded", torch::randn({3, 1}).expand({3, 4})},
      {"parameter", torch::randn({2, 3}).requires_grad_()},
      {"wide", torch::ones({300})},
      {"long_rows", torch::zeros({2, 70000}, torch::kUInt8)},
      {"four_dims", torch::randn({2, 1, 3, 2})},
  };
}

TEST(StateDictTest, WhatStateDictBytesWritesReadsBack) {
  const auto tensors = every_kind_of_tensor();
  const std::vector<StateEntry> entries = read_state_dict(state_dict_bytes(tensors));
  ASSERT_EQ(entries.size(), tensors.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    SCOPED_TRACE(name);
    EXPECT_EQ(entries[i].name, name);  // in the order given
    ASSERT_EQ(entries[i].problem, "");
    EXPECT_EQ(entries[i].tensor.scalar_type(), expected.scalar_type());
    EXPECT_EQ(entries[i].tensor.sizes(), expected.sizes());
    EXPECT_TRUE(torch::equal(entries[i].tensor, expected.detach()));
    EXPECT_FALSE(entries[i].tensor.requires_grad());
  }
  EXPECT_EQ(read_state_dict(state_dict_bytes({})).size(), 0u);
}

// The layout of Python's torch.save: archive/data.pkl, a byteorder record,
// one record per storage holding exactly its tensor's bytes, and a pickle
// that calls nothing but what torch.load's weights_only allows.
TEST(StateDictTest, StateDictBytesHasTorchSavesLayout) {
  const torch::Tensor base = torch::arange(20, torch::kFloat);
  const std::string bytes = state_dict_bytes({{"weight", base.slice(0, 4, 10).view({2, 3})},
                                              {"steps", torch::tensor(int64_t{3})},
                                              {"none", torch::zeros({0})}});
  std::vector<ZipEntry> records;
  ASSERT_EQ(zip_archive_fault(bytes, &records), "");
  std::map<std::string, ZipEntry> by_record;
  for (const auto& record : records) by_record[record.name] = record;
  ASSERT_EQ(by_record.count("archive/data.pkl"), 1u);
  ASSERT_EQ(by_record.count("archive/byteorder"), 1u);
  EXPECT_EQ(by_record.at("archive/byteorder").data, "little");
  EXPECT_EQ(by_record.at("archive/data/0").data.size(), 6 * sizeof(float));
  EXPECT_EQ(by_record.at("archive/data/1").data.size(), sizeof(int64_t));
  EXPECT_EQ(by_record.at("archive/data/2").data.size(), 0u);
  EXPECT_EQ(by_record.count("archive/version"), 1u);
  std::set<std::string> globals;
  const std::string fault = walk_pickle(by_record.at("archive/data.pkl").data, [&](const PickleOp& op) {
    if (op.opcode == 'c') globals.insert(fmt::format("{}.{}", op.bytes, op.second));
    return std::string();
  });
  EXPECT_EQ(fault, "");
  EXPECT_EQ(globals, (std::set<std::string>{"collections.OrderedDict",
                                            "torch._utils._rebuild_tensor_v2",
                                            "torch.FloatStorage", "torch.LongStorage"}));
}

TEST(StateDictTest, StateDictBytesRefusesWhatTorchSaveCannotWriteAsAStorage) {
  EXPECT_THAT(
      [] {
        state_dict_bytes({{"q", torch::quantize_per_tensor(torch::randn({2}), 0.1, 0, torch::kQInt8)}});
      },
      ThrowsMessage<Error>(HasSubstr("\"q\" is a quantized tensor")));
  EXPECT_THAT([] { state_dict_bytes({{"s", torch::zeros({2}).to_sparse()}}); },
              ThrowsMessage<Error>(HasSubstr("\"s\" is a sparse or other non-strided tensor")));
  EXPECT_THAT([] { state_dict_bytes({{"u", torch::Tensor()}}); },
              ThrowsMessage<Error>(HasSubstr("\"u\" is an undefined tensor")));
}

// Python's torch.load, with its defaults (weights_only=True from PyTorch
// 2.6), reads what state_dict_bytes writes as the OrderedDict it was.
TEST(StateDictTest, PythonsTorchLoadReadsWhatStateDictBytesWrites) {
  const testing_support::TempDir scratch;
  const auto tensors = every_kind_of_tensor();
  json expected = {{"names", json::array()}, {"entries", json::object()}};
  for (const auto& [name, tensor] : tensors) {
    expected["names"].push_back(name);
    torch::Tensor values = tensor.detach();
    if (values.is_complex()) values = torch::view_as_real(values);
    values = values.to(torch::kDouble).flatten().contiguous();
    expected["entries"][name] = {
        {"shape", tensor.sizes().vec()},
        {"dtype", python_dtype(tensor.scalar_type())},
        {"values", std::vector<double>(values.data_ptr<double>(),
                                       values.data_ptr<double>() + values.numel())}};
  }
  const std::string bytes = state_dict_bytes(tensors);
  std::ofstream(scratch.path / "state.pt", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::ofstream(scratch.path / "state.json") << expected.dump();
  const auto result = testing_support::run_command(fmt::format(
      "'{}' '{}/tests/python/check_saved_state_dict.py' '{}' '{}' 2>&1", TRAINLOOP_PYTHON,
      TRAINLOOP_SOURCE_DIR, (scratch.path / "state.pt").string(),
      (scratch.path / "state.json").string()));
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("tensors loaded, 0 problems"));
}

TEST(StateDictTest, ArchivesThatAreNoStateDict) {
  EXPECT_THAT([] { read_state_dict("not a zip"); },
              ThrowsMessage<Error>(HasSubstr("no end-of-central-directory record")));
  // A TorchScript archive: its data.pkl makes a module object (NEWOBJ).
  torch::serialize::OutputArchive archive;
  archive.write("step", torch::tensor(7));
  std::ostringstream out;
  archive.save_to(out);
  EXPECT_THAT([&] { read_state_dict(out.str()); },
              ThrowsMessage<Error>(HasSubstr("opcode 0x81 at byte 23 has no place in a state dict")));
}

}  // namespace
}  // namespace trainloop::io
