#include "trainloop/data/csv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <chrono>
#include <clocale>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <locale>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"

namespace {

namespace fs = std::filesystem;
using testing::ElementsAre;
using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::CsvOptions;
using trainloop::data::CsvTable;
using trainloop::data::Labels;
using trainloop::data::MissingValues;
using trainloop::data::parse_csv_table;
using trainloop::data::parse_sklearn_csv;
using trainloop::data::read_csv_table;
using trainloop::data::read_sklearn_csv;

const std::string kData = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/";

nlohmann::json load_goldens() {
  std::ifstream in(kData + "csv_goldens.json");
  if (!in) throw std::runtime_error("cannot open " + kData + "csv_goldens.json");
  return nlohmann::json::parse(in);
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<float> row_of(const torch::Tensor& inputs, int64_t row) {
  const torch::Tensor r = inputs[row].contiguous();
  return std::vector<float>(r.data_ptr<float>(), r.data_ptr<float>() + r.numel());
}

std::vector<int64_t> longs(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

CsvTable parse(const std::string& text, const CsvOptions& options = {}) {
  return parse_csv_table(text, "t.csv", options);
}

// Expects parse(text, options) to throw Error with `message` in its text.
void expect_error(const std::string& text, const CsvOptions& options, const std::string& message) {
  EXPECT_THAT([&] { parse(text, options); }, ThrowsMessage<Error>(HasSubstr(message)))
      << "input: " << text;
}

void expect_quoted_table(const CsvTable& table, const nlohmann::json& expected) {
  const auto features = expected["features"];
  ASSERT_EQ(table.dataset.inputs.sizes(), (std::vector<int64_t>{14, 3}));
  EXPECT_EQ(table.dataset.inputs.scalar_type(), torch::kFloat32);
  for (int64_t r = 0; r < 14; ++r) {
    std::vector<float> want;
    for (const double v : features[r]) want.push_back(static_cast<float>(v));
    EXPECT_EQ(row_of(table.dataset.inputs, r), want) << "row " << r;
  }
  EXPECT_EQ(table.feature_names, expected["feature_names"].get<std::vector<std::string>>());
  EXPECT_EQ(table.label_name, "label");
  EXPECT_EQ(table.class_names, expected["classes"].get<std::vector<std::string>>());
  EXPECT_EQ(table.dataset.targets.scalar_type(), torch::kInt64);
  EXPECT_EQ(longs(table.dataset.targets), expected["targets"].get<std::vector<int64_t>>());
  EXPECT_EQ(table.lines, expected["lines"].get<std::vector<int64_t>>());
  EXPECT_EQ(table.dropped_rows, 0);
}

// The expectations come from Python's csv module (tests/python/make_csv_goldens.py).
TEST(CsvTest, ReadsQuotedCellsAsPythonsCsvModule) {
  const nlohmann::json expected = load_goldens()["quoted"];
  const CsvOptions options = CsvOptions("label").drop({"Id"});
  expect_quoted_table(read_csv_table(kData + "quoted.csv", options), expected);
  expect_quoted_table(read_csv_table(kData + "quoted.csv.gz", options), expected);
  expect_quoted_table(parse_csv_table(read_bytes(kData + "quoted.csv"), "mem", options), expected);
}

// Column sums are compared with 1e-6 relative tolerance: each cell is
// rounded to float32 (relative error <= 6e-8) and the sums of these
// non-negative values keep that bound; rows are compared exactly with the
// float32 rounding of scikit-learn's float64 values.
TEST(CsvTest, ReadsScikitLearnTablesAsScikitLearn) {
  const nlohmann::json tables = load_goldens()["sklearn_tables"];
  int checked = 0;
  for (const auto& [name, expected] : tables.items()) {
    const std::string path = expected["path"];
    SCOPED_TRACE(name);
    if (!fs::exists(path)) {
      ADD_FAILURE() << path << " is missing: install the python3-sklearn package";
      continue;
    }
    // digits.csv.gz has no first line of counts: read it as a headerless table.
    const CsvTable table = name == "digits.csv.gz"
                               ? read_csv_table(path, CsvOptions("65").header(false))
                               : read_sklearn_csv(path);
    const auto rows = expected["rows"].get<int64_t>();
    const auto width = expected["features"].get<int64_t>();
    ASSERT_EQ(table.dataset.inputs.sizes(), (std::vector<int64_t>{rows, width}));
    EXPECT_EQ(table.class_names, expected["class_names"].get<std::vector<std::string>>());
    const torch::Tensor sums = table.dataset.inputs.to(torch::kDouble).sum(0);
    const auto want_sums = expected["column_sums"].get<std::vector<double>>();
    for (int64_t f = 0; f < width; ++f) {
      EXPECT_NEAR(sums[f].item<double>(), want_sums[f], 1e-6 * std::fabs(want_sums[f]))
          << "column " << f + 1;
    }
    const auto as_floats = [](const nlohmann::json& values) {
      std::vector<float> out;
      for (const double v : values) out.push_back(static_cast<float>(v));
      return out;
    };
    EXPECT_EQ(row_of(table.dataset.inputs, 0), as_floats(expected["first_row"]));
    EXPECT_EQ(row_of(table.dataset.inputs, rows - 1), as_floats(expected["last_row"]));
    EXPECT_EQ(longs(torch::bincount(table.dataset.targets)),
              expected["class_counts"].get<std::vector<int64_t>>());
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(tables.size()));
}

TEST(CsvTest, LineEndsBomBlankLinesAndSpaces) {
  const CsvTable want = parse("a,b,y\n1.5,-2,x\n3,4e2,z\n", CsvOptions("y"));
  for (const std::string text :
       {"a,b,y\r\n1.5,-2,x\r\n3,4e2,z\r\n", "a,b,y\r1.5,-2,x\r3,4e2,z", "\xef\xbb\xbf" "a,b,y\n1.5,-2,x\n3,4e2,z",
        "\n\na,b,y\n\n1.5,-2,x\n\r\n3,4e2,z\n\n", " a , b\t,y\n 1.5 ,\t-2, x\n+3,\"4e2\",z "}) {
    const CsvTable table = parse(text, CsvOptions("y"));
    EXPECT_TRUE(torch::equal(table.dataset.inputs, want.dataset.inputs)) << text;
    EXPECT_TRUE(torch::equal(table.dataset.targets, want.dataset.targets)) << text;
    EXPECT_EQ(table.feature_names, (std::vector<std::string>{"a", "b"})) << text;
    EXPECT_EQ(table.class_names, (std::vector<std::string>{"x", "z"})) << text;
  }
  EXPECT_TRUE(torch::equal(want.dataset.inputs, torch::tensor({{1.5f, -2.0f}, {3.0f, 400.0f}})));
  // Blank lines do not count as rows, but they do count as lines.
  EXPECT_EQ(parse("\n\na,b,y\n\n1.5,-2,x\n\r\n3,4e2,z\n", CsvOptions("y")).lines,
            (std::vector<int64_t>{5, 7}));
}

TEST(CsvTest, NumbersIgnoreTheLocale) {
  // A C++ global locale with a decimal comma must not change what is read.
  struct CommaDecimal : std::numpunct<char> {
    char do_decimal_point() const override { return ','; }
  };
  const std::locale previous = std::locale::global(std::locale(std::locale::classic(), new CommaDecimal));
  const bool c_locale_changed = std::setlocale(LC_NUMERIC, "de_DE.UTF-8") != nullptr;
  const CsvTable table = parse("a,b\n1.5,\"2,5\"\n", CsvOptions().features({"a"}));
  const auto message = [&] {
    try {
      parse("a\n\"2,5\"\n");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  std::setlocale(LC_NUMERIC, "C");
  std::locale::global(previous);
  EXPECT_EQ(table.dataset.inputs.item<float>(), 1.5f);
  EXPECT_THAT(message, HasSubstr("t.csv:2:1: \"2,5\" in column 1 \"a\" is not a number"));
  if (!c_locale_changed) GTEST_SKIP() << "de_DE.UTF-8 is not installed; checked the C++ locale only";
}

TEST(CsvTest, NumericLabelsSortByValue) {
  const CsvTable table = parse("x,y\n1,10\n2,2\n3,1\n4,2.0\n5,10\n", CsvOptions("y"));
  EXPECT_EQ(table.class_names, (std::vector<std::string>{"1", "2", "10"}));
  EXPECT_EQ(longs(table.dataset.targets), (std::vector<int64_t>{2, 1, 0, 1, 2}));
  // Labels 0..K-1 keep their values.
  EXPECT_EQ(longs(parse("x,y\n1,2\n2,0\n3,1\n", CsvOptions("y")).dataset.targets),
            (std::vector<int64_t>{2, 0, 1}));
}

TEST(CsvTest, TextLabelsSortBytewise) {
  const CsvTable table = parse("x,y\n1,b\n2,B\n3,a\n4,b\n5,10\n", CsvOptions("y"));
  EXPECT_EQ(table.class_names, (std::vector<std::string>{"10", "B", "a", "b"}));
  EXPECT_EQ(longs(table.dataset.targets), (std::vector<int64_t>{3, 1, 2, 3, 0}));
}

TEST(CsvTest, GivenClassNamesSetTheOrder) {
  const CsvTable table =
      parse("x,y\n1,low\n2,high\n3,mid\n", CsvOptions("y").class_names({"low", "mid", "high"}));
  EXPECT_EQ(longs(table.dataset.targets), (std::vector<int64_t>{0, 2, 1}));
  EXPECT_EQ(table.class_names, (std::vector<std::string>{"low", "mid", "high"}));
  expect_error("x,y\n1,low\n2,top\n", CsvOptions("y").class_names({"low", "high"}),
               "t.csv:3:2: label \"top\" in column 2 \"y\" is not one of the 2 class names");
}

TEST(CsvTest, ClassIndicesStayAsTheyAre) {
  const CsvTable table = parse("x,y\n1,3\n2,0\n3,3.0\n", CsvOptions("y").labels(Labels::class_indices));
  EXPECT_EQ(longs(table.dataset.targets), (std::vector<int64_t>{3, 0, 3}));
  EXPECT_EQ(table.class_names, (std::vector<std::string>{"0", "1", "2", "3"}));
  for (const std::string bad : {"2.5", "-1", "x", "1000"}) {
    expect_error("x,y\n1," + bad + "\n", CsvOptions("y").labels(Labels::class_indices),
                 "t.csv:2:2: \"" + bad +
                     "\" in column 2 \"y\" is not a class index, expected a whole number from 0 "
                     "to 999");
  }
  expect_error("x,y\n1,3\n",
               CsvOptions("y").labels(Labels::class_indices).class_names({"a", "b", "c"}),
               "expected a whole number from 0 to 2");
}

TEST(CsvTest, RegressionTargetsAndNoLabel) {
  const CsvTable table = parse("x,y\n1,0.5\n2,-1e3\n", CsvOptions("y").labels(Labels::regression));
  EXPECT_EQ(table.dataset.targets.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(table.dataset.targets, torch::tensor({0.5f, -1000.0f})));
  EXPECT_TRUE(table.class_names.empty());
  const CsvTable unlabeled = parse("x,y\n1,2\n");
  EXPECT_FALSE(unlabeled.dataset.targets.defined());
  EXPECT_EQ(unlabeled.feature_names, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(unlabeled.label_name, "");
}

TEST(CsvTest, ChoosesAndOrdersColumns) {
  const std::string text = "Id,a,b,c,y\n7,1,2,3,u\n8,4,5,6,v\n";
  const CsvTable all = parse(text, CsvOptions("y").drop({"Id"}));
  EXPECT_EQ(all.feature_names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(torch::equal(all.dataset.inputs, torch::tensor({{1.f, 2.f, 3.f}, {4.f, 5.f, 6.f}})));
  const CsvTable chosen = parse(text, CsvOptions("y").features({"c", "a"}));
  EXPECT_EQ(chosen.feature_names, (std::vector<std::string>{"c", "a"}));
  EXPECT_TRUE(torch::equal(chosen.dataset.inputs, torch::tensor({{3.f, 1.f}, {6.f, 4.f}})));
  // A dropped column may hold anything.
  EXPECT_EQ(parse("Id,a\nrow one,1\n,2\n", CsvOptions().drop({"Id"})).dataset.size(), 2);
}

TEST(CsvTest, HeaderlessTablesNameColumnsByNumber) {
  const CsvTable table = parse("counts line\n1,2,0\n3,4,1\n",
                               CsvOptions("3").header(false).skip_lines(1));
  EXPECT_EQ(table.feature_names, (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(table.label_name, "3");
  EXPECT_EQ(table.lines, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(torch::equal(table.dataset.inputs, torch::tensor({{1.f, 2.f}, {3.f, 4.f}})));
}

TEST(CsvTest, OtherDelimiters) {
  const CsvTable semicolon = parse("a;b\n1,5;2\n", CsvOptions().delimiter(';').features({"b"}));
  EXPECT_EQ(semicolon.dataset.inputs.item<float>(), 2.0f);
  const CsvTable tabs = parse("a\tb\n1\t\"x\ty\"\n", CsvOptions("b").delimiter('\t'));
  EXPECT_EQ(tabs.class_names, (std::vector<std::string>{"x\ty"}));
}

TEST(CsvTest, MissingValuesDropOrFill) {
  const std::string text = "a,b,y\n1,2,u\n,4,v\n5,NA,u\n7,?,v\n9,10,\n";
  const CsvTable dropped = parse(text, CsvOptions("y").missing(MissingValues::drop_row));
  EXPECT_EQ(dropped.dropped_rows, 4);
  EXPECT_EQ(dropped.lines, (std::vector<int64_t>{2}));
  EXPECT_EQ(dropped.class_names, (std::vector<std::string>{"u"}));  // dropped rows add no class
  const CsvTable filled =
      parse("a,b,y\n1,2,u\n,4,v\n5,NA,u\n6,nan,v\n", CsvOptions("y").missing(MissingValues::fill_mean));
  EXPECT_TRUE(torch::equal(filled.dataset.inputs,
                           torch::tensor({{1.f, 2.f}, {4.f, 4.f}, {5.f, 3.f}, {6.f, 3.f}})));
  expect_error(text, CsvOptions("y").missing(MissingValues::fill_mean),
               "t.csv:6:3: missing label in column 3 \"y\", expected a value");
  expect_error("a,b\n,1\n?,2\n", CsvOptions().missing(MissingValues::fill_mean),
               "t.csv: column 1 \"a\" has no values, expected at least one");
  expect_error("a,b\n,1\n1,\n", CsvOptions().missing(MissingValues::drop_row),
               "t.csv: all 2 rows have missing values, expected at least one complete row");
  // Markers are configurable; with none, only empty cells are missing.
  expect_error("a\nNA\n", CsvOptions().missing_markers({}),
               "t.csv:2:1: \"NA\" in column 1 \"a\" is not a number");
}

TEST(CsvTest, RaggedRows) {
  expect_error("a,b,c\n1,2,3\n4,5\n", {},
               "t.csv:3:3: the row ends after 2 cells, expected 3 as in the header on line 1");
  expect_error("a,b\n1,2,3,4\n", {},
               "t.csv:2:3: more than 2 cells in this row, expected 2 as in the header on line 1");
  expect_error("1,2\n3\n", CsvOptions().header(false),
               "t.csv:2:2: the row ends after 1 cells, expected 2 as in the first row on line 1");
}

TEST(CsvTest, BadCells) {
  expect_error("a,b,y\n1,x,0\n", CsvOptions("y"),
               "t.csv:2:2: \"x\" in column 2 \"b\" is not a number, expected a number");
  expect_error("a,b,y\n1,,0\n", CsvOptions("y"),
               "t.csv:2:2: missing value in column 2 \"b\", expected a number");
  expect_error("a,b,y\n1,2,\n", CsvOptions("y"),
               "t.csv:2:3: missing label in column 3 \"y\", expected a value");
  expect_error("a\ninf\n", {}, "t.csv:2:1: \"inf\" in column 1 \"a\" is not finite");
  expect_error("a\n1e39\n", {}, "\"1e39\" in column 1 \"a\" is out of range");
  expect_error("a\n1e999\n", {}, "\"1e999\" in column 1 \"a\" is out of range");
  expect_error("a\n0x10\n", {}, "\"0x10\" in column 1 \"a\" is not a number");
  expect_error("a\n+-1\n", {}, "\"+-1\" in column 1 \"a\" is not a number");
  // Lines count the line breaks inside quotes: the extra cell is on line 5.
  expect_error("a\n1\n2\n\"multi\nline\",\n", {}, "t.csv:5:2: more than 1 cells");
  // Long or control-laden cells are cut and escaped: the message stays one line.
  const std::string long_cell(100, 'z');
  EXPECT_THAT([&] { parse("a\n\"" + long_cell + "\nq\"\n"); },
              ThrowsMessage<Error>(HasSubstr("\"" + std::string(40, 'z') + "...\" in column 1")));
  EXPECT_THAT([&] { parse("a\n\"x\ny\"\n"); }, ThrowsMessage<Error>(HasSubstr("\"x\\x0ay\"")));
}

TEST(CsvTest, UnknownColumns) {
  const std::string text = "Id,a,y\n1,2,3\n";
  expect_error(text, CsvOptions("nope"),
               "t.csv:1: no label column \"nope\" in the header, expected one of \"Id\", \"a\", "
               "\"y\"");
  expect_error(text, CsvOptions("y").drop({"Idd"}), "t.csv:1: no dropped column \"Idd\"");
  expect_error(text, CsvOptions("y").features({"b"}), "t.csv:1: no feature column \"b\"");
  expect_error("skip\n1,2\n", CsvOptions("9").header(false).skip_lines(1),
               "t.csv:2: no label column \"9\", expected a column number from 1 to 2 (the table "
               "has no header row)");
  expect_error("a,b\n1,2\n", CsvOptions("a").drop({"b"}),
               "t.csv:1: no feature columns left besides the label and the dropped ones");
  expect_error("a,b,a\n1,2,3\n", {},
               "t.csv:1:3: \"a\" has the name of column 1, expected unique column names");
}

TEST(CsvTest, EmptyInput) {
  expect_error("", {}, "t.csv:1: no header row, expected a line of column names");
  expect_error("\n\r\n\n", {}, "t.csv:4: no header row");
  expect_error("a,b\n", {}, "t.csv:1: no rows after the header, expected at least one");
  expect_error("", CsvOptions().header(false), "t.csv:1: no rows, expected at least one");
  expect_error("a\n1\n", CsvOptions().skip_lines(5), "t.csv:3: no header row");
}

TEST(CsvTest, Quotes) {
  const CsvTable table = parse("\"a\",\"b \"\"q\"\"\"\n\"1\" ,\"2\"\n");
  EXPECT_EQ(table.feature_names, (std::vector<std::string>{"a", "b \"q\""}));
  expect_error("a,b\n1,\"2\n3\n", {},
               "t.csv:2:2: the quote that opens this cell is never closed, expected a closing '\"'");
  expect_error("\"a\"x,b\n", {}, "t.csv:1:1: text after the closing quote of a quoted cell");
  // A quote inside an unquoted cell is text, as most CSV readers take it.
  EXPECT_EQ(parse("h\"x,y\n1,2\n").feature_names, (std::vector<std::string>{"h\"x", "y"}));
}

TEST(CsvTest, BadOptions) {
  expect_error("a\n1\n", CsvOptions().delimiter('"'), "t.csv: delimiter \"\\\"\", expected a character");
  expect_error("a\n1\n", CsvOptions("a").drop({"a"}), "column \"a\" is both the label and dropped");
  expect_error("a\n1\n", CsvOptions("a").features({"a"}), "column \"a\" is both the label and a feature");
  expect_error("a\n1\n", CsvOptions().features({"a", "a"}), "feature column \"a\" named twice");
  expect_error("a\n1\n", CsvOptions().skip_lines(-1), "t.csv: skip_lines -1, expected 0 or more");
  expect_error("a,y\n1,2\n", CsvOptions("y").labels(Labels::regression).class_names({"x"}),
               "class_names given for Labels::regression");
}

TEST(CsvTest, Limits) {
  expect_error("a,b,c,d,e\n1,2,3,4,5\n", CsvOptions().max_columns(4),
               "t.csv:1: more than 4 columns, expected at most max_columns 4");
  expect_error("a\n1\n", CsvOptions().max_bytes(3), "t.csv: 4 bytes, expected at most max_bytes 3");
  std::string many = "x,y\n";
  for (int i = 0; i < 30; ++i) many += "1," + std::to_string(i * 0.5) + "\n";
  expect_error(many, CsvOptions("y").max_classes(20),
               "t.csv:22:2: more than 20 distinct labels in column 2 \"y\", expected at most "
               "max_classes 20 (a numeric target? use Labels::regression)");
  // A header of a million cells stops at max_columns, quickly.
  const auto start = std::chrono::steady_clock::now();
  expect_error(std::string(1000000, ','), {}, "more than 100000 columns");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

class CsvFileTest : public testing::Test {
 protected:

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (scratch_.path / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  static std::string gzip(const std::string& bytes) {
    uLongf size = compressBound(static_cast<uLong>(bytes.size())) + 32;
    std::string out(size, '\0');
    z_stream stream{};
    EXPECT_EQ(deflateInit2(&stream, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
    stream.avail_in = static_cast<uInt>(bytes.size());
    stream.next_out = reinterpret_cast<Bytef*>(out.data());
    stream.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&stream, Z_FINISH), Z_STREAM_END);
    out.resize(stream.total_out);
    deflateEnd(&stream);
    return out;
  }

  trainloop::testing_support::TempDir scratch_;
};

TEST_F(CsvFileTest, MissingFile) {
  const std::string path = (scratch_.path / "none.csv").string();
  EXPECT_THAT([&] { read_csv_table(path); },
              ThrowsMessage<Error>(HasSubstr(path + ": cannot open: No such file or directory")));
  EXPECT_THAT([&] { read_sklearn_csv(path + ".gz"); },
              ThrowsMessage<Error>(HasSubstr("cannot open: No such file or directory")));
  EXPECT_THAT([&] { read_csv_table(scratch_.path.string()); },
              ThrowsMessage<Error>(
                  HasSubstr(scratch_.path.string() + ": not a regular file (a directory)")));
}

TEST_F(CsvFileTest, ErrorsNameTheFile) {
  const std::string path = write("bad.csv", "a,b\n1,oops\n");
  EXPECT_THAT([&] { read_csv_table(path); },
              ThrowsMessage<Error>(HasSubstr(path + ":2:2: \"oops\" in column 2 \"b\"")));
}

TEST_F(CsvFileTest, BadGzip) {
  const std::string plain = write("plain.csv.gz", "a\n1\n");
  EXPECT_THAT([&] { read_csv_table(plain); },
              ThrowsMessage<Error>(HasSubstr(plain + ": not a gzip file (starts with 61 0a, expected 1f 8b)")));
  std::string text = "a,b\n";
  for (int i = 0; i < 2000; ++i) text += std::to_string(i) + "," + std::to_string(i * 7 % 13) + "\n";
  const std::string whole = gzip(text);
  const std::string cut = write("cut.csv.gz", whole.substr(0, whole.size() / 2));
  EXPECT_THAT([&] { read_csv_table(cut); }, ThrowsMessage<Error>(HasSubstr(cut + ": gzip error:")));
  std::string garbled = whole;
  garbled[garbled.size() - 6] = static_cast<char>(garbled[garbled.size() - 6] ^ 0x55);  // the CRC
  const std::string bad_crc = write("crc.csv.gz", garbled);
  EXPECT_THAT([&] { read_csv_table(bad_crc); },
              ThrowsMessage<Error>(HasSubstr(bad_crc + ": gzip error: incorrect data check")));
}

TEST_F(CsvFileTest, DecompressionStopsAtTheLimit) {
  // 16 MB of commas compress to about 16 kB; the limit stops the inflation.
  const std::string bomb = write("bomb.csv.gz", gzip(std::string(16 << 20, ',')));
  EXPECT_THAT([&] { read_csv_table(bomb, CsvOptions().max_bytes(1 << 20)); },
              ThrowsMessage<Error>(HasSubstr(
                  bomb + ": more than 1048576 bytes after decompression, expected at most that")));
  const std::string exact = write("exact.csv", "a\n1\n");
  EXPECT_EQ(read_csv_table(exact, CsvOptions().max_bytes(4)).dataset.size(), 1);
  EXPECT_THAT([&] { read_csv_table(exact, CsvOptions().max_bytes(3)); },
              ThrowsMessage<Error>(HasSubstr(
                  exact + ": 4 bytes, expected at most 3 (the max_bytes limit)")));
}

// A .csv.gz that inflates past the limit is refused having held a buffer of
// 1 MiB, not the limit's worth of text (and, as it grew, twice that).
TEST_F(CsvFileTest, DecompressionPastTheLimitHoldsLittleMemory) {
  const std::string bomb = (scratch_.path / "bomb.csv.gz").string();
  gzFile out = gzopen(bomb.c_str(), "wb9");
  ASSERT_NE(out, nullptr);
  const std::string chunk(1 << 20, ',');
  for (int i = 0; i < 128; ++i) ASSERT_EQ(gzwrite(out, chunk.data(), chunk.size()), 1 << 20);
  ASSERT_EQ(gzclose(out), Z_OK);
  std::string message;
  const int64_t growth = trainloop::testing_support::peak_memory_growth([&] {
    try {
      read_csv_table(bomb, CsvOptions().max_bytes(int64_t{64} << 20));
    } catch (const Error& e) {
      message = e.what();
    }
  });
  EXPECT_THAT(message, HasSubstr(bomb + ": more than 67108864 bytes after decompression"));
  ASSERT_GE(growth, 0) << "/proc/self/status or /proc/self/clear_refs is not available";
  EXPECT_LT(growth, int64_t{16} << 20) << "peak memory grew by " << growth << " bytes";
}

TEST_F(CsvFileTest, RefusesAFifo) {
  for (const std::string name : {"fifo.csv", "fifo.csv.gz"}) {
    const fs::path fifo = scratch_.path / name;
    trainloop::testing_support::make_fifo(fifo);
    EXPECT_EQ(trainloop::testing_support::error_reading_fifo(
                  fifo, [&] { read_csv_table(fifo.string()); }),
              fifo.string() + ": not a regular file (a FIFO)");
  }
}

TEST(SklearnCsvTest, ChecksTheFirstLine) {
  const CsvTable table = parse_sklearn_csv("2,2,no,yes\n1,2,1\n3,4,0\n", "s.csv");
  EXPECT_EQ(table.class_names, (std::vector<std::string>{"no", "yes"}));
  EXPECT_EQ(longs(table.dataset.targets), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(table.feature_names, (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(table.lines, (std::vector<int64_t>{2, 3}));
  const auto error = [](const std::string& text, const std::string& message) {
    EXPECT_THAT([&] { parse_sklearn_csv(text, "s.csv"); }, ThrowsMessage<Error>(HasSubstr(message)))
        << text;
  };
  error("", "s.csv:1: no first line, expected n_samples,n_features,<class names...>");
  error("a,b,c\n", "s.csv:1:1: n_samples \"a\", expected a whole number from 1 to");
  error("2,0,c\n", "s.csv:1:2: n_features \"0\", expected a whole number from 1 to 99999");
  error("2,2\n1,2,0\n", "s.csv:1: 2 cells, expected n_samples,n_features,<class names...>");
  error("2,2,a,b\n", "s.csv:2: no rows, expected the 2 announced on line 1");
  error("2,2,a,b\n1,2,3,0\n", "s.csv:2: more than 3 cells, expected 3: the 2 features announced");
  error("2,3,a,b\n1,2,0\n", "s.csv:2: 3 cells, expected 4: the 3 features announced on line 1");
  error("3,2,a,b\n1,2,0\n3,4,1\n", "s.csv: 2 rows, expected the 3 announced on line 1");
  error("2,2,a,b\n1,2,0\n3,4,2\n",
        "s.csv:3:3: \"2\" in column 3 is not a class index, expected a whole number from 0 to 1");
}

// Any bytes give a table or an Error, never a crash, a hang or another
// exception type: mutations of a valid table, deterministic.
TEST(CsvRobustnessTest, MutatedInputGivesTableOrError) {
  const std::string seed_text = read_bytes(kData + "quoted.csv");
  ASSERT_FALSE(seed_text.empty());
  const std::string alphabet = std::string(",\"\r\n ;x1.-+e\0\xff", 15);
  uint64_t state = 12345;
  const auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  const std::vector<CsvOptions> settings = {
      CsvOptions("label").drop({"Id"}),
      CsvOptions("label").drop({"Id"}).missing(MissingValues::fill_mean),
      CsvOptions("4").header(false).skip_lines(1).drop({"1"}).missing(MissingValues::drop_row),
      CsvOptions("z").drop({"Id", "label"}).labels(Labels::regression),
  };
  int tables = 0;
  int errors = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string text = seed_text;
    const int edits = 1 + static_cast<int>(next() % 8);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = next() % text.size();
      switch (next() % 4) {
        case 0: text[at] = alphabet[next() % alphabet.size()]; break;
        case 1: text.insert(at, 1, alphabet[next() % alphabet.size()]); break;
        case 2: text.erase(at, 1 + next() % 8); break;
        default: text.resize(at); break;
      }
    }
    for (const CsvOptions& options : settings) {
      try {
        const CsvTable table = parse_csv_table(text, "fuzz", options);
        ASSERT_EQ(table.dataset.inputs.dim(), 2);
        ASSERT_EQ(static_cast<int64_t>(table.feature_names.size()), table.dataset.inputs.size(1));
        ASSERT_EQ(static_cast<int64_t>(table.lines.size()), table.dataset.size());
        ++tables;
      } catch (const Error& e) {
        ASSERT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
        ++errors;
      }
    }
  }
  // Both outcomes occur, so the mutations reach past the first checks.
  EXPECT_GT(tables, 100);
  EXPECT_GT(errors, 100);
}

}  // namespace
